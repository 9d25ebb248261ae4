"""The paper on Oxford Flowers-102: every teacher-input policy, and a label-only student, at 10k / 100k / 1M epochs.

Paper Fig. 3 (policies at long schedules; function matching best) and Figs. 4-5
(patience: function matching keeps improving up to 1M epochs, fixed teachers
overfit), finding 5 (label-only student with the same recipe is far worse).
Teacher: BiT-M R152x2 fine-tuned on flowers at 128 px (`bit_flowers_t`).
"""

import importlib.util
import pathlib

from ablate.study import variant

_spec = importlib.util.spec_from_file_location("ablate_paper_common", pathlib.Path(__file__).with_name("_paper.py"))
_paper = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_paper)

# preset: (epochs, temperature, lr, wd), the paper's recommended settings for flowers102
TABLE = {
    "fast": (10_000, 10.0, 3e-3, 3e-4),
    "medium": (100_000, 1.0, 1e-3, 1e-4),
    "long": (1_000_000, 1.0, 3e-4, 1e-5),
}

STUDY = _paper.paper_study(
    "paper_flowers", "oxford_flowers102", "bit_flowers_t",
    "Flowers-102 at paper scale: which teacher-input policy wins, and does function matching keep improving "
    "from 10k to 1M epochs while fixed teachers overfit?",
    TABLE,
    _paper.ALL_POLICIES + [variant("supervised", policy="supervised", loss="label_ce", teacher=None)],
    ens_crops=1000,  # fix/ic_ens: the paper averages 1k inception crops
)
