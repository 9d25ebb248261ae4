"""The paper on SUN-397: fixed vs consistent vs function matching at 100 / 1k / 3k epochs.

TFDS `sun397/tfds` splits (train 76,127 / validation / test). Teacher:
BiT-M R152x2 fine-tuned on SUN-397 at 128 px (`bit_sun_t`).
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("ablate_paper_common", pathlib.Path(__file__).with_name("_paper.py"))
_paper = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_paper)

# preset: (epochs, temperature, lr, wd), the paper's recommended settings for sun397
TABLE = {
    "fast": (100, 10.0, 1e-2, 1e-3),
    "medium": (1_000, 10.0, 1e-3, 1e-4),
    "long": (3_000, 10.0, 1e-2, 3e-5),
}

STUDY = _paper.paper_study(
    "paper_sun", "sun397", "bit_sun_t",
    "SUN-397 at paper scale: does function matching beat consistent and fixed teaching, more so with patience?",
    TABLE,
    ["fix/ic_ens", "same/ic", "funmatch"],
    ens_crops=1000,  # fix/ic_ens: the paper averages 1k inception crops
)
