"""netdsl: a declarative graph compiler for convolution-only attention blocks.

Pipeline: ``.net`` source -> AST (:mod:`netdsl.parser`) -> typed IR (:mod:`netdsl.elaborate`)
-> per-target pass pipeline (:mod:`netdsl.passes`) -> backend (:mod:`netdsl.backends`).
"""

__version__ = "0.1.0"
