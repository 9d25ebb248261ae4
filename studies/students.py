"""Which student families gain from function matching? The paper distils into ResNets and MobileNets (Beyer et al.,
CVPR 2022, Sec. 5); here the default ResNet student against a MobileNetV2-style net and a small ViT of about the
same size (`ablate list`: resnet_s 43,870, mobilenet_s 44,602, vit_s 52,570 parameters), each trained by function
matching and alone on the labels (the label-only student's learning rate, 0.1, was chosen for resnet_s and is kept
for the other families). Those rates do not fit vit_s: on one seed at lr 1e-2 its label-only and funmatch students
are level, 72% (reports/README.md, "Student families"); choose each family's rates on the validation split before
reading its row."""

from ablate.study import LABEL_ONLY, Study

STUDY = Study(
    name="students",
    question="Which student families gain from function matching over label-only training?",
    base=dict(epochs=300, eval_spacing="linear"),
    axes=dict(model=["resnet_s", "mobilenet_s", "vit_s"], policy=["funmatch", LABEL_ONLY]),
    seeds=3,
    presets=dict(quick=dict(epochs=30, subset_per_class=20, seeds=1, num_evals=2),
                 full=dict(epochs=300, seeds=3)),
    x="model",
    hue="policy",
    figures=("final", "curves"),
)
