"""The radiologist's verdict fed back: inbound HL7 ORU^R01 over MLLP, stored, matched to the study by accession
number, read per finding and compared with the node's own findings (agreement per finding and model version).

``listener`` (MLLP connections), ``intake`` (validate, store, acknowledge), ``oru`` (HL7 reading, ACKs), ``terms`` and
``verdicts`` (reading the report text), ``matching`` (study, record, agreement), ``report`` (the agreement table for
the dashboard and ``cxr-node feedback report``), ``service`` (what the node starts). Nothing here changes a job, a
result or a delivery.
"""
