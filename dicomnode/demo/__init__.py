"""The demo wing: ``cxr-node demo`` (:mod:`dicomnode.demo.run`) and the synthetic chest studies it sends
(:mod:`dicomnode.demo.synthetic`, no patient data; tests and benchmarks use them too). Installed with the product
because ``cxr-node demo`` is a product command; nothing in the node's serving path imports it."""
