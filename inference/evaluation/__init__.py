"""Evaluation harness: score a model on CXRTrek-format data per stage and question type.

- :mod:`.dataset` loads the CXRTrek format into typed studies and items (gold values included).
- :mod:`.predictions` produces answers: oracle, a predictions file, or a model run (teacher-forced or free).
- :mod:`.scoring` scores answers per stage and per question type.
- :mod:`.report` renders the scores: rich table, JSON, radar chart.
- :mod:`.quantization` compares two quantization settings of the same model on the same inputs.

Answers are parsed by :func:`inference.parsing.parse_answer` only; there is no second parser here.
"""
