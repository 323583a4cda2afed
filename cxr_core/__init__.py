"""CXR Lens core library: everything the dashboard and the training scripts share.

Nothing in this package imports Streamlit, the pages or the training scripts; they call
into it (docs/ARCHITECTURE.md). Modules, by what they hold:

Inputs
- ``config``       dataclasses and constants: tasks and their titles, input spec, limits
- ``imaging``      decode uploads and files into validated 8-bit grayscale arrays
- ``dicom_view``   DICOM windows and the header fields the study view shows
- ``data``         dataset layouts (Kermany, class folders, manifest), patient-level splits
- ``datastats``    image sizes and counts of a dataset folder
- ``preprocess``   the one preprocessing path shared by training, evaluation and the app

Networks
- ``archs``        one ``ArchSpec`` per architecture: the only table to edit to add one
- ``weights``      reading pretrained weights from local files (never downloads)
- ``small_cnn``    the random-init baseline network
- ``models``       build a network, probabilities, CAM layers, feature steps

Records
- ``registry``     registry entries: write, list, load, verify, atomic card updates
- ``cards``        typed model cards and metric keys
- ``overlay``      per-user settings laid over the read-only release registry
- ``compact``      release storage: trained part over pip weights, JPEG thumbnails

Training
- ``training``     train a classifier into the registry
- ``calibration``  temperature scaling, operating points, reliability diagrams
- ``detector_training`` fit the healthy-only detectors and the chest X-ray guard into the registry
- ``lung_focus``   share of a class activation map inside the lung field
- ``metrics``      classification metrics and the predicted-class rule
- ``progress``     the progress-callback types

Answers
- ``inference``    load a classifier and run batched inference
- ``predict``      one image to every classifier's answer in one shared pass
- ``neighbors``    exact nearest-neighbour search and votes
- ``projection``   t-SNE and UMAP maps, placing a new point on a map
- ``reference``    a classifier's embedding index: build it, read it
- ``explain``      class activation maps (package: targets, methods, explainer, overlays, metrics)
- ``anomaly``      healthy-only detectors, their thresholds, loading a detector entry
- ``feature_recon`` feature reconstruction (in-painting, reverse distillation) detectors
- ``ood``          the chest X-ray guard (is this a chest X-ray at all?)

Products
- ``worklist``     many studies at once: the batched table
- ``report``       the study report (PDF and text)
- ``synthetic``    deterministic phantoms for the demo registry and tests
- ``demo``         build the synthetic demo registry (classifiers, indexes, detectors)
- ``runtime``      thread limits for serving
"""

__version__ = "0.1.0"
