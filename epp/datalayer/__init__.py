"""The fleet picture: datastore, endpoint sources and model-server metrics scraping."""
