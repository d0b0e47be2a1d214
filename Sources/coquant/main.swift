print("coquant")
