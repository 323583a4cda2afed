"""CXR Lens core library: everything the dashboard and the training scripts share.

Nothing in this package imports Streamlit; pages and scripts call into it. Modules:

- ``config``     dataclasses and constants (classes per task, input spec, limits)
- ``imaging``    decode uploads and files into validated 8-bit grayscale arrays
- ``data``       Kaggle-layout dataset reader, file-name parsing, patient-level splits
- ``preprocess`` the one preprocessing path shared by training, evaluation and the app
- ``models``     backbones, heads, pretrained-weight loading, embeddings
- ``registry``   registry entries: write, list, load, verify, atomic card updates
- ``metrics``    classification and calibration metrics
- ``predict``    one call from an image to what the Predict page shows
- ``synthetic``  deterministic phantom generator for the demo registry and tests
"""

__version__ = "0.1.0"
