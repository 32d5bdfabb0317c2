"""Evaluation harness: score a model on CXRTrek-format data per stage and question type.

- :mod:`.dataset` loads the CXRTrek format into typed studies and items (gold values included).
- :mod:`.predictions` produces answers: oracle, a predictions file, or a model run (teacher-forced or free).
- :mod:`.scoring` scores answers per stage and per question type.
- :mod:`.findings` evaluates the checklist per finding: AUROC, sensitivity / specificity at the operating points,
  calibration (reliability bins, ECE) of the probability of presence, thresholds for a target sensitivity.
- :mod:`.report` renders the scores: rich tables, JSON, radar chart, calibration / ROC plot, HTML page.
- :mod:`.quantization` compares two quantization settings of the same model on the same inputs.

Answers are parsed by :func:`inference.parsing.parse_answer` only; there is no second parser here.
"""
