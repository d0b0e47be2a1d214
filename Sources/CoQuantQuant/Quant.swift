import CoQuantTensor

/// The Quant layer: quantizer grids, weight solvers (RTN, GPTQ, CDQuant), rotations and subspace bases.
public enum CoQuantQuant {}
