import CCoQuantKernels
import CoQuantModel
import CoQuantTensor
import Foundation

// Which kernel runs each packed tensor of a quantized folder, from its quantization_config: the activation blocks
// below are where the simulator's hooks fake-quantize each linear's input (Recipe.swift `installHooks`,
// SubspaceFusion.swift `installSubspaceHooks`); the runtime-vs-simulator tests hold the two to the same function.
public enum Runtime {
    /// Whether this CPU runs the fast paths; without AVX2 every kernel runs its scalar reference (correct, slow).
    public static var hasAVX2: Bool { cq_cpu_has_avx2() != 0 }

    /// The kernels for a folder with this configuration. `dynamicInt8`: weight-only folders quantize the inputs of
    /// their decoder linears to int8 per token at run time (llama.cpp's way: integer kernels for prompts; not the
    /// function the folder was quantized and evaluated with).
    public static func kernels(config c: ModelConfiguration, quantization q: QuantizationConfig, dynamicInt8: Bool = false) -> PackedKernels {
        PackedKernels(linear: { name, planes in
            do {
                var blocks = activationBlocks(name, config: c, quantization: q)
                if dynamicInt8, q.activations == nil, name.hasPrefix("model.layers.") {
                    blocks = [ActivationBlock(col: 0, count: planes.cols, bits: 8)]
                }
                return try PackedLinearKernel(planes, activation: blocks)
            } catch let e as RuntimeError {
                throw ModelFileError(name, e.description)
            }
        }, rows: { name, table in
            switch table {
            case .int8(let t): return Int8RowsKernel(t)
            case .f16(let t): return F16RowsKernel(t)
            case .planes(let p):
                do { return try PackedRowsKernel(p) } catch let e as RuntimeError { throw ModelFileError(name, e.description) }
            }
        }, kvCache: kvCacheFormat(config: c, quantization: q))
    }

    /// The packed KV cache: per (token, KV head) as the simulator's K/V quantizers (Recipe.swift
    /// `installFakeQuantization`, SubspaceFusion.swift `SubspaceQuantizers`); nil when keys and values stay fp32.
    static func kvCacheFormat(config c: ModelConfiguration, quantization q: QuantizationConfig) -> KVCacheFormat? {
        guard let kv = q.kvCache, kv.bits < 16 else { return nil }
        let hd = c.headDim, clip = Float(kv.clipRatio)
        guard let s = q.subspace else {
            return KVCacheFormat(keys: [ActivationBlock(col: 0, count: hd, bits: kv.bits, clip: clip)],
                                 values: [ActivationBlock(col: 0, count: hd, bits: kv.bits, minMax: true, clip: clip)], headDim: hd)
        }
        // The head's first hd − r_h channels at the scheme's bits, its last r_h at high_bits.
        let low = hd - s.highChannelsPerHead
        func blocks(minMax: Bool) -> [ActivationBlock] {
            [ActivationBlock(col: 0, count: low, bits: kv.bits, minMax: minMax, clip: clip),
             ActivationBlock(col: low, count: hd - low, bits: s.highBits, minMax: minMax, clip: clip)].filter { $0.count > 0 }
        }
        return KVCacheFormat(keys: blocks(minMax: false), values: blocks(minMax: true), headDim: hd)
    }

    /// The per-token quantization of the input of linear `name` ("model.layers.3.self_attn.o_proj"); nil when it
    /// stays fp32 (weight-only schemes, the LM head).
    static func activationBlocks(_ name: String, config c: ModelConfiguration, quantization q: QuantizationConfig) -> [ActivationBlock]? {
        guard let a = q.activations, name.hasPrefix("model.layers.") else { return nil }
        let clip = Float(a.clipRatio), module = name.split(separator: ".").suffix(2).joined(separator: ".")
        switch module {
        case "mlp.down_proj":
            // ResQ/CoQuant's down_proj input is uniform (after its online Hadamard), as QuaRot's.
            return a.downProjBits < 16 ? [ActivationBlock(col: 0, count: c.intermediateSize, bits: a.downProjBits, clip: clip)] : nil
        case "self_attn.o_proj":
            let width = c.numAttentionHeads * c.headDim
            guard let s = q.subspace else { return [ActivationBlock(col: 0, count: width, bits: a.bits, clip: clip)] }
            // Per (token, head): the head's first hd − r_h channels at the scheme's bits, its last r_h at high_bits,
            // plain min/max ranges.
            let hd = c.headDim, rh = s.highChannelsPerHead
            return (0..<c.numAttentionHeads).flatMap { h in
                [ActivationBlock(col: h * hd, count: hd - rh, bits: a.bits, minMax: true, clip: clip),
                 ActivationBlock(col: h * hd + hd - rh, count: rh, bits: s.highBits, minMax: true, clip: clip)].filter { $0.count > 0 }
            }
        default:    // q/k/v, gate/up: the normed residual stream
            let d = c.hiddenSize
            guard let s = q.subspace else { return [ActivationBlock(col: 0, count: d, bits: a.bits, clip: clip)] }
            let r = s.highChannels
            return [ActivationBlock(col: 0, count: d - r, bits: a.bits, clip: clip),
                    ActivationBlock(col: d - r, count: r, bits: s.highBits, clip: clip)].filter { $0.count > 0 }
        }
    }

    /// Loads a model to run on the runtime: a quantized folder's packed tensors become kernels, read in place;
    /// anything else loads as ModelLoader does (fp32).
    public static func load(_ path: String, requireTokenizer: Bool = false, dynamicInt8: Bool = false) throws -> LoadedModel {
        try ModelLoader.load(path, requireTokenizer: requireTokenizer) { c, q in kernels(config: c, quantization: q, dynamicInt8: dynamicInt8) }
    }
}
