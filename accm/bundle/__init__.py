"""The bundle contract in one place: what a bundle's manifest holds and how it is checked
(``manifest``, ``schema``, ``onnx_refs``), every stage and tensor name producers and consumers
use (``names``), and where default bundles are cached (``cache``)."""
