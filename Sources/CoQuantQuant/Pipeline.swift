import CoQuantModel
import CoQuantTensor
import Foundation

// Layer-by-layer calibration as the reference does it (GPTQ/QuaRot `gptq_fwrd`, sequential groups):
// capture the layer-0 inputs of every calibration window, then per layer quantize the linears group by group in
// the order q/k/v → o → gate/up → down, each group's Hessian collected from inputs computed with the groups before
// it already quantized, and propagate the quantized layer's outputs to the next layer.
//
// Shapes: n windows of T tokens; residual stream X[w] [T, d]; attention context [T, H·hd]; SwiGLU product [T, F].
// Memory: the residual of every window plus one stage's intermediate (n·T·max(d, H·hd) floats, n·T·F for the
// down_proj inputs when they fit `downProjInputBudget`), one layer's weights.

/// One linear's outcome, for the report.
public struct LinearReport: Codable, Sendable {
    public let layer: Int
    public let name: String               // "self_attn.q_proj", …
    public let loss: Double               // tr((W − Ŵ) H (W − Ŵ)ᵀ) with the calibration H
    /// CDQuant: the loss of its start (GPTQ's Ŵ by default) on the same H as `loss` — GPTQ against CDQuant on
    /// identical inputs, where two separate runs would each propagate their own quantized outputs. (The start is
    /// scored in float64, `loss` on the weights as packed and decoded in float32: ~1e-7 relative apart.) Reports
    /// before this field carried `initialLoss`, the damped objective, which is not comparable with `loss`.
    public let startLoss: Double?
    public let seconds: Double
    public let dampingUsed: Double?
    public let dampingEscalations: Int
}

public struct PipelineError: Error, CustomStringConvertible {
    public let description: String
}

/// How to quantize one linear: (layer, name, W [out, in], H [in, in]) → quantized weight.
public typealias LinearSolver = (_ layer: Int, _ name: String, _ W: Matrix<Double>, _ H: Matrix<Double>) throws -> QuantizedWeight

public enum LinearGroup: String, CaseIterable, Sendable {
    case qkv, o, gateUp, down

    public var names: [String] {
        switch self {
        case .qkv: ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
        case .o: ["self_attn.o_proj"]
        case .gateUp: ["mlp.gate_proj", "mlp.up_proj"]
        case .down: ["mlp.down_proj"]
        }
    }
}

extension DecoderLayer {
    public subscript(linear name: String) -> Linear {
        get {
            switch name {
            case "self_attn.q_proj": selfAttn.qProj
            case "self_attn.k_proj": selfAttn.kProj
            case "self_attn.v_proj": selfAttn.vProj
            case "self_attn.o_proj": selfAttn.oProj
            case "mlp.gate_proj": mlp.gateProj
            case "mlp.up_proj": mlp.upProj
            case "mlp.down_proj": mlp.downProj
            default: preconditionFailure("no linear \(name)")
            }
        }
        set {
            switch name {
            case "self_attn.q_proj": selfAttn.qProj = newValue
            case "self_attn.k_proj": selfAttn.kProj = newValue
            case "self_attn.v_proj": selfAttn.vProj = newValue
            case "self_attn.o_proj": selfAttn.oProj = newValue
            case "mlp.gate_proj": mlp.gateProj = newValue
            case "mlp.up_proj": mlp.upProj = newValue
            case "mlp.down_proj": mlp.downProj = newValue
            default: preconditionFailure("no linear \(name)")
            }
        }
    }

    public static let linearNames = LinearGroup.allCases.flatMap(\.names)
}

public final class LayerwiseCalibration {
    public let model: LlamaModel
    /// Residual stream entering the next layer to quantize, one [T, d] array per window.
    public private(set) var inputs: [[Float]]
    public private(set) var nextLayer = 0
    let T: Int
    /// Bytes the down_proj inputs of all windows may take to be kept between its Hessian and the output pass.
    public var downProjInputBudget = 4 << 30
    /// How much each window's first token counts in H (1: as much as any token, the reference). That token is an
    /// attention sink, read by every later token's attention, so its outputs matter far more than 1/T of the loss
    /// says: GPTQ with small groups trades them away (RESULTS.md, "GPTQ with small groups").
    public var sinkWeight: Float = 1

    /// Captures the layer-0 inputs (the embeddings) of every window.
    public init(model: LlamaModel, windows: [[Int]]) throws {
        guard let T = windows.first?.count, windows.allSatisfy({ $0.count == T }) else {
            throw PipelineError(description: "calibration needs at least one window, all of the same length")
        }
        self.model = model
        self.T = T
        inputs = windows.map { model.embed($0) }
    }

    /// Runs layers 0..<layer of the (already quantized) model over the inputs without quantizing anything:
    /// how `--resume` gets back to where an interrupted run stopped.
    public func skip(to layer: Int) {
        while nextLayer < layer {
            for w in inputs.indices { model.decoderLayer(nextLayer, &inputs[w], rows: T, cache: nil) }
            nextLayer += 1
        }
    }

    /// Quantizes the next layer group by group with `solve`, replaces its weights, and propagates the inputs.
    public func quantizeNextLayer(solve: LinearSolver, onLinear: (LinearReport) -> Void = { _ in }) throws -> [LinearReport] {
        let l = nextLayer
        precondition(l < model.layers.count, "all layers are done")
        var reports: [LinearReport] = []
        func run(_ group: LinearGroup, _ H: Matrix<Double>) throws {
            for name in group.names {
                let start = ContinuousClock.now
                let linear = model.layers[l][linear: name]
                let W = Matrix(rows: linear.outFeatures, cols: linear.inFeatures, data: linear.weight.map(Double.init))
                let q = try solve(l, name, W, H)
                guard q.values.data.allSatisfy(\.isFinite) else {
                    throw PipelineError(description: "layer \(l) \(name): quantized weights contain NaN/Inf")
                }
                model.layers[l][linear: name].weight = q.values.data.map { Float($0) }
                let report = LinearReport(layer: l, name: name, loss: layerLoss(W, q.values, H),
                                          startLoss: q.initialValues.map { layerLoss(W, $0, H) },
                                          seconds: seconds(since: start),
                                          dampingUsed: q.dampingUsed, dampingEscalations: q.dampingEscalations)
                reports.append(report)
                onLinear(report)
            }
        }
        let c = model.config
        // No withSingleThreadedBLAS here: the model's stages and the solvers split their own work across cores,
        // and the float64 Hessian updates (dsyrk, a large share of the run) want OpenBLAS's threads.
        do {
            // q/k/v read input_layernorm(x).
            var H = HessianAccumulator(columns: c.hiddenSize)
            for x in inputs { try accumulate(&H, model.attentionInput(l, x, rows: T), layer: l, "attention input") }
            try run(.qkv, H.H)

            // o_proj reads the attention context computed with the quantized q/k/v.
            var contexts: [[Float]] = []
            H = HessianAccumulator(columns: c.numAttentionHeads * c.headDim)
            for x in inputs {
                let ctx = model.attentionContext(l, model.attentionInput(l, x, rows: T), rows: T, cache: nil)
                try accumulate(&H, ctx, layer: l, "attention context")
                contexts.append(ctx)
            }
            try run(.o, H.H)

            // gate/up read post_attention_layernorm(x + o_proj(ctx)).
            H = HessianAccumulator(columns: c.hiddenSize)
            for w in inputs.indices {
                model.addAttentionOutput(l, &inputs[w], contexts[w], rows: T)
                contexts[w] = []
                try accumulate(&H, model.mlpInput(l, inputs[w], rows: T), layer: l, "MLP input")
            }
            contexts = []
            try run(.gateUp, H.H)

            // down_proj reads silu(gate) ⊙ up with the quantized gate/up. Kept for the output pass when n·T·F
            // floats fit `downProjInputBudget` (SmolLM2 at 128 × 2048: 1.6 GB, saving a quarter of the layer's
            // matmuls); recomputed otherwise — the same values either way, gate/up do not change in between.
            H = HessianAccumulator(columns: c.intermediateSize)
            let keep = inputs.count * T * c.intermediateSize * MemoryLayout<Float>.size <= downProjInputBudget
            var downInputs: [[Float]] = []
            for x in inputs {
                let g = model.downProjInput(l, model.mlpInput(l, x, rows: T), rows: T)
                try accumulate(&H, g, layer: l, "down_proj input")
                if keep { downInputs.append(g) }
            }
            try run(.down, H.H)

            for w in inputs.indices {
                let g = keep ? downInputs[w] : model.downProjInput(l, model.mlpInput(l, inputs[w], rows: T), rows: T)
                if keep { downInputs[w] = [] }
                model.addMLPOutput(l, &inputs[w], g, rows: T)
                guard inputs[w].allSatisfy(\.isFinite) else {
                    throw PipelineError(description: "layer \(l): output contains NaN/Inf")
                }
            }
        }
        nextLayer += 1
        return reports
    }

    /// Adds one window (counted as one sample, as the reference's add_batch does for a batch of one sequence).
    func accumulate(_ H: inout HessianAccumulator, _ x: [Float], layer: Int, _ what: String) throws {
        guard x.allSatisfy(\.isFinite) else { throw PipelineError(description: "layer \(layer): \(what) contains NaN/Inf") }
        guard sinkWeight != 1 else { return x.withUnsafeBufferPointer { H.add($0.baseAddress!, rows: T, samples: 1) } }
        var x = x
        let root = sinkWeight.squareRoot()
        for i in 0..<(x.count / T) { x[i] *= root }
        x.withUnsafeBufferPointer { H.add($0.baseAddress!, rows: T, samples: 1) }
    }
}
