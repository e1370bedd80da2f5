"""Suite-wide settings: every test starts from the same global seeds (tests also seed their own generators)."""

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _fixed_seeds():
    torch.manual_seed(0)
    np.random.seed(0)
    yield
