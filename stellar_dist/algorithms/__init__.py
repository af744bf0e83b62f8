"""Semi-supervised algorithms, one file each; `ssl.algorithm` names a key of ALGORITHMS.

Each class declares the streams and views it needs, computes its loss from one step's batches and keeps its own
state (saved in checkpoints); the engine, session and data code name none of them.
"""

from .base import Algorithm
from .deepcluster import DeepCluster
from .fixmatch import FixMatch
from .flexmatch import FlexMatch
from .freematch import FreeMatch
from .mixmatch import MixMatch
from .pseudolabel import PseudoLabel
from .softmatch import SoftMatch
from .supervised import Supervised

ALGORITHMS: dict[str, type[Algorithm]] = {
    "supervised": Supervised,
    "pseudolabel": PseudoLabel,
    "mixmatch": MixMatch,
    "fixmatch": FixMatch,
    "flexmatch": FlexMatch,
    "freematch": FreeMatch,
    "softmatch": SoftMatch,
    "deepcluster": DeepCluster,
}
