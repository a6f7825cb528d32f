"""xtallm refiner."""
