print("caucus: not built yet")
