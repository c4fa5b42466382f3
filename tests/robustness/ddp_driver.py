"""Run `main.main(argv)` under torchrun, then let EVERY rank write its final parameters.

Only rank 0 writes run folders; to show that the ranks agree, this driver (test-only) keeps the
models the trainers wrap for DDP and saves each rank's copy to $DDP_DUMP/rank<r>-<i>.safetensors.
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import utils.distributed as udist  # noqa: E402

wrapped = []
_wrap = udist.wrap_model


def recording_wrap(model, device):
    wrapped.append(model)
    return _wrap(model, device)


udist.wrap_model = recording_wrap
import trainers.classifier  # noqa: E402

trainers.classifier.wrap_model = recording_wrap

import main  # noqa: E402

rc = main.main(sys.argv[1:])
if rc == 0:
    from safetensors.torch import save_file

    r = int(os.environ["RANK"])
    for i, m in enumerate(wrapped):
        save_file({k: v.detach().contiguous() for k, v in m.state_dict().items()},
                  os.path.join(os.environ["DDP_DUMP"], f"rank{r}-{i}.safetensors"))
sys.exit(rc)
