"""Result objects: the TID 1500 Structured Report and the Secondary Capture reasoning page.

Pure core: a reasoning record and source datasets in, pydicom datasets out. Never imports ``dicomnode``.
"""
