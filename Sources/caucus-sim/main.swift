print("caucus-sim: not built yet")
