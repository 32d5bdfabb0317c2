"""The reasoning engine: DICOM pixels -> model images, the 8-stage CXRTrek flow, model loading, answer parsing.

Pure core: datasets in, a :class:`inference.record.ReasoningRecord` out. Never imports ``dicomnode``.
"""
