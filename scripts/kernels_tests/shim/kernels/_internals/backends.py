def _get_torch_privateuse_backend_name():
    import torch

    return torch._C._get_privateuse1_backend_name()
