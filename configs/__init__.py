"""YAML recipes (llm/, refiner/, pipeline/, accelerate/, data/) and the code every recipe shares:
reading and checking settings (`recipe`) and the Accelerate training run (`training`).

Installed as `xtallm.configs`, so an installed copy finds its shipped recipes and held-out
split files without the source tree (`recipe.shipped("pipeline/default.yaml")`).
"""
