print("example: not built yet")
