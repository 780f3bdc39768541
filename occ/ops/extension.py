"""The compiled kernels `occ._C`, when they were built (`make extension`).

Without them, or without kernels for a tensor's device, the ops fall back to their pure-PyTorch
references and say so once.
"""
import warnings

import torch  # noqa: F401  (loads libtorch, which occ._C links against)

try:
    from occ import _C
    _IMPORT_ERROR = None
except ImportError as error:
    _C = None
    _IMPORT_ERROR = error

_warned = set()


def _warn_once(message):
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def kernels_for(device):
    """`occ._C` if it has kernels for `device` (a torch.device), else None after one warning."""
    if _C is None:
        _warn_once(f"occ._C could not be imported ({_IMPORT_ERROR}); occ.ops uses the slow pure-PyTorch "
                   "references. Build the kernels with `make extension`.")
        return None
    if device.type == "cuda" and not _C.with_cuda:
        _warn_once("occ._C was built without CUDA kernels (no CUDA toolkit at build time); occ.ops uses "
                   "the pure-PyTorch references on CUDA tensors. Rebuild with CUDA_HOME set.")
        return None
    if device.type not in ("cpu", "cuda"):
        _warn_once(f"occ._C has no kernels for {device.type} tensors; occ.ops uses the pure-PyTorch references.")
        return None
    return _C
