"""Parameter folding: nodes computed from constants, parameters and buffers -> ``const`` nodes.

``constant_folding`` bound to the weights: parameters and buffers count as known values, so a
parameter-only subgraph becomes one constant, e.g. a positional encoding ``conv(grid, weight, bias)``,
a relative-position bias gathered from a table by an index buffer, or a linear's weight reshaped to a
1x1 kernel. Only inference targets run it: trainable modules keep their parameters as parameters,
trained and loaded by name. The folding rule, its size limit and its post-condition are
:func:`netdsl.passes.constant_folding.make_constant_folding`'s; the parameters a fold no longer needs
are left to ``dce``.
"""

from __future__ import annotations

from netdsl.passes.base import WeightedPass
from netdsl.passes.constant_folding import PARAMS_RULE, make_constant_folding

PASS = WeightedPass(PARAMS_RULE, "optimize", (__doc__ or "").strip(), make_constant_folding)
