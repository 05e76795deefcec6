"""Networks: the lung U-Net, the COVID-19 classifier, the contrastive pretraining network."""
