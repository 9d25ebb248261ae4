"""The paper on Oxford-IIIT Pets: fixed vs consistent vs function matching at 1k / 3k / 30k epochs.

Train on train[:90%] (3,312 images), select on train[90%:], report on test.
Teacher: BiT-M R152x2 fine-tuned on pets at 128 px (`bit_pets_t`).
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("ablate_paper_common", pathlib.Path(__file__).with_name("_paper.py"))
_paper = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_paper)

# preset: (epochs, temperature, lr, wd), the paper's recommended settings for pets
TABLE = {
    "fast": (1_000, 5.0, 1e-2, 1e-3),
    "medium": (3_000, 10.0, 3e-3, 3e-4),
    "long": (30_000, 2.0, 3e-3, 1e-5),
}

STUDY = _paper.paper_study(
    "paper_pets", "oxford_iiit_pet", "bit_pets_t",
    "Pets at paper scale: does function matching beat consistent and fixed teaching, more so with patience?",
    TABLE,
    ["fix/ic_ens", "same/ic", "funmatch"],
    ens_crops=1000,  # fix/ic_ens: the paper averages 1k inception crops
)
