"""Understanding a network by optimising its input.

Four methods share one engine (:mod:`.engine`: pure losses of the input, optax
transformations, ``lax`` loops, the classifier's own preprocessing, 8-bit results):

* :func:`invert` — reconstruct a photo from one layer's features (Mahendran & Vedaldi
  2015), from several random starts, with a total-variation prior and an L-alpha bound.
* :func:`visualize` — the image that maximally activates a class or a channel, from
  noise, with total-variation and jitter regularisation.
* :func:`dream` — Deep Dream: amplify a layer's activations in a photo over octaves.
* :func:`stylize` — neural style (Gatys et al. 2016) with any registered classifier's
  feature maps.

Layers are the named feature maps of ``Classifier.features``; :func:`layer_shapes` lists
them. Each method's ``run.write_*`` writes a self-describing run directory for the gallery.
"""

from fooltools.visualize.classviz import Visualization, visualize
from fooltools.visualize.deepdream import Dream, dream
from fooltools.visualize.engine import InputOptimizer, Trace, input_optimizer
from fooltools.visualize.inversion import Inversion, invert
from fooltools.visualize.layers import check_layer, layer_shapes
from fooltools.visualize.priors import jitter, l_alpha, total_variation
from fooltools.visualize.style import Stylization, gram, stylize

__all__ = [
    "Dream",
    "InputOptimizer",
    "Inversion",
    "Stylization",
    "Trace",
    "Visualization",
    "check_layer",
    "dream",
    "gram",
    "input_optimizer",
    "invert",
    "jitter",
    "l_alpha",
    "layer_shapes",
    "stylize",
    "total_variation",
    "visualize",
]
