"""JAT data: expert recordings (BabyAI, Meta-World, MuJoCo) and the published dataset, as RLDS."""
