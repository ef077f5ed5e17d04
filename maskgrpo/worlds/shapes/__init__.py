"""The small image world: flat-colour circles, squares and triangles on grey, with GenEval-style
prompts. One module per concern:

- `vocabulary`: colours (sRGB), classes, plurals, numbers, prompt words, wrong kinds;
- `scene`: `ShapeObject`, rendering, GenEval's position geometry;
- `placement`: a scene of objects that satisfies a GenEval-schema row;
- `prompts`: random rows and examples for the six tags, wrong rows and scenes, the suite's rows,
  GenEval folders of renders;
- `task`: the registered `shapes` task; `detector` (+ `geometry`): the registered `shapes`
  detector;
- `clip_data`, `vq_data`: the training data of the world's CLIP (`maskgrpo train-clip`) and VQ
  tokenizer (`maskgrpo train-vq`).
"""

from . import detector, task  # noqa: F401  (registration)
