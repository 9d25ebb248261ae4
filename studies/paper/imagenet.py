"""The paper on ImageNet: a ResNet-50 from a BiT-M R152x2 teacher at 224 px, 1200 and 4800 epochs.

The paper's table gives one ImageNet setting (1200 epochs, T = 1, lr 3e-2,
wd 3e-4, batch 4096, 5000 warmup steps); finding 4 compares it with 4800
epochs: function matching at 1200 matches consistent teaching at 4800, and a
fixed teacher overfits. Same hyperparameters for both lengths (the table has no
other). Train on train[:98%], select on train[99%:], report on validation.

The fixed teacher here is `fix/rs` (one resized view, streamed): `fix/ic_ens`
with the paper's 1k crops would cost more than the training itself, and the
ensemble path holds the whole train split in memory. For the 384 px teacher
(the paper's best students) use teacher `bit_imagenet_t384`; note that records
are stored at 280 px (1.25 x 224), so that teacher sees upsampled crops.
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("ablate_paper_common", pathlib.Path(__file__).with_name("_paper.py"))
_paper = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_paper)

# preset: (epochs, temperature, lr, wd)
TABLE = {
    "e1200": (1_200, 1.0, 3e-2, 3e-4),
    "e4800": (4_800, 1.0, 3e-2, 3e-4),
}

STUDY = _paper.paper_study(
    "paper_imagenet", "imagenet2012", "bit_imagenet_t224",
    "ImageNet at paper scale: does function matching at 1200 epochs match consistent teaching at 4800, while a "
    "fixed teacher overfits?",
    TABLE,
    ["fix/rs", "same/ic", "funmatch"],
    batch_size=4096, warmup_steps=5000, resolution=224,
)
