"""Paper finding 7: does initialising the student from a supervised student help, at short and long schedules?

The `init` field names the run id of a finished run; `ablate run init` first
needs the supervised student of `studies/init_source.py`, whose run id is
computed here from the same config, so no id is typed by hand.
"""

import importlib.util
import pathlib

from ablate.study import Study, cells, variant

_spec = importlib.util.spec_from_file_location("init_source", pathlib.Path(__file__).with_name("init_source.py"))
_source = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_source)
SOURCE_RUN = cells(_source.STUDY)[0].run_id

STUDY = Study(
    name="init",
    question="Does a pretrained (supervised) student initialisation help distillation, and does its advantage "
             "shrink with longer schedules?",
    base=dict(policy="funmatch", eval_spacing="log"),  # as patience: at full, the scratch cells are its funmatch runs
    axes=dict(init=[variant("scratch", init=None), variant("supervised", init=SOURCE_RUN)],
              epochs=[30, 100, 300]),
    seeds=2,
    presets=dict(quick=dict(epochs=[10, 30], seeds=1, num_evals=4),
                 full=dict(epochs=[30, 100, 300], seeds=2)),
    x="epochs",
    hue="init",
    figures=("patience", "curves"),
)
