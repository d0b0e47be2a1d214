import Foundation

// `config.json["quantization_config"]` of a folder CoQuant writes: the one typed home of what a quantized folder
// holds and how it runs. Written by Quant (QuantizedFolder.swift), read by the loader, the simulator, the Runtime and
// the CLI. Keys are the file's own (snake_case); every object refuses keys it does not know, so a folder from a
// newer CoQuant, or a hand-edited one, fails with the key's name instead of being half understood.
//
// Versions:
//   1  `coquant-packed-v1`: codes bit-packed row by row (`bits` per column), fp32 embeddings and head.
//   2  `coquant-packed-v2`: codes in the runtime's 4-bit plane runs (coquant_kernels.h), read in place; embeddings
//      and the LM head int8 per row by default (`embeddings`).
// A v1 config decodes into this type unchanged (`formatVersion` 1; v1 had no `embeddings`: fp32).

public struct QuantizationConfig: Codable, Sendable, Equatable {
    public static let currentVersion = 2

    public var quantMethod: String
    public var format: String
    public var version: Int?
    public var method: String
    public var solver: String
    public var scheme: String
    public var weights: Weights
    /// How the embedding table and the LM head are stored; nil in v1 (fp32 both).
    public var embeddings: Embeddings?
    public var modulesNotQuantized: [String]
    public var calibration: Calibration
    public var activations: Activations?
    public var kvCache: KVCacheConfig?
    public var rotation: Rotation?
    public var subspace: Subspace?
    /// Quant's full `QuantizeOptions`, kept verbatim so a run can be reproduced (Quant decodes it).
    public var coquantOptions: OpaqueJSON

    enum CodingKeys: String, CodingKey, CaseIterable {
        case quantMethod = "quant_method", format, version, method, solver, scheme, weights, embeddings
        case modulesNotQuantized = "modules_not_quantized", calibration, activations, kvCache = "kv_cache", rotation,
             subspace, coquantOptions = "coquant_options"
    }

    public struct Weights: Codable, Sendable, Equatable {
        public var bits: Int
        public var storageBits: Int
        /// -1: per output channel.
        public var groupSize: Int
        public var symmetric: Bool
        public var grid: String
        public var mseClip: Bool
        public var actOrder: Bool
        public var percdamp: Double
        public var targets: [String]
        /// "bitpacked" (v1) or "u4-plane-runs" (v2).
        public var layout: String?
        enum CodingKeys: String, CodingKey, CaseIterable {
            case bits, storageBits = "storage_bits", groupSize = "group_size", symmetric, grid, mseClip = "mse_clip",
                 actOrder = "act_order", percdamp, targets, layout
        }
        public init(bits: Int, storageBits: Int, groupSize: Int, symmetric: Bool, grid: String, mseClip: Bool, actOrder: Bool,
                    percdamp: Double, targets: [String], layout: String?) {
            self.bits = bits; self.storageBits = storageBits; self.groupSize = groupSize; self.symmetric = symmetric
            self.grid = grid; self.mseClip = mseClip; self.actOrder = actOrder; self.percdamp = percdamp
            self.targets = targets; self.layout = layout
        }
    }

    public struct Embeddings: Codable, Sendable, Equatable {
        /// "int8-row" (int8 codes, one fp32 scale per row: llama.cpp's Q8_0 with one block per row), "int4-g32" (4-bit
        /// plane runs, asymmetric per 32 columns), "f16" or "f32".
        public var format: String
        /// Whether the LM head (tied or not) uses the same storage.
        public var lmHead: String
        enum CodingKeys: String, CodingKey, CaseIterable { case format, lmHead = "lm_head" }
        public init(format: String, lmHead: String) { self.format = format; self.lmHead = lmHead }
    }

    public struct Calibration: Codable, Sendable, Equatable {
        public var dataset: String
        public var nsamples: Int
        public var seqlen: Int
        public var seed: UInt32
        enum CodingKeys: String, CodingKey, CaseIterable { case dataset, nsamples, seqlen, seed }
        public init(dataset: String, nsamples: Int, seqlen: Int, seed: UInt32) {
            self.dataset = dataset; self.nsamples = nsamples; self.seqlen = seqlen; self.seed = seed
        }
    }

    public struct Activations: Codable, Sendable, Equatable {
        public var bits: Int
        public var downProjBits: Int
        public var symmetric: Bool
        public var granularity: String
        public var clipRatio: Double
        public var targets: [String]
        enum CodingKeys: String, CodingKey, CaseIterable {
            case bits, downProjBits = "down_proj_bits", symmetric, granularity, clipRatio = "clip_ratio", targets
        }
    }

    public struct KVCacheConfig: Codable, Sendable, Equatable {
        public var bits: Int
        public var symmetric: Bool
        public var granularity: String
        public var groupSize: Int
        public var clipRatio: Double
        public var keys: String
        enum CodingKeys: String, CodingKey, CaseIterable {
            case bits, symmetric, granularity, groupSize = "group_size", clipRatio = "clip_ratio", keys
        }
    }

    /// QuaRot's rotations (descriptive: the simulator rebuilds them from the seed in `coquant_options`).
    public struct Rotation: Codable, Sendable, Equatable {
        public var residual: String
        public var seed: UInt32
        public var normsFused: Bool
        public var embeddingsCentered: Bool
        public var valueHeads: String
        public var online: [String: String]
        enum CodingKeys: String, CodingKey, CaseIterable {
            case residual, seed, normsFused = "norms_fused", embeddingsCentered = "embeddings_centered",
                 valueHeads = "value_heads", online
        }
        public init(residual: String, seed: UInt32, normsFused: Bool, embeddingsCentered: Bool, valueHeads: String,
                    online: [String: String]) {
            self.residual = residual; self.seed = seed; self.normsFused = normsFused
            self.embeddingsCentered = embeddingsCentered; self.valueHeads = valueHeads; self.online = online
        }
    }

    /// ResQ / CoQuant: the fused bases' high-precision blocks.
    public struct Subspace: Codable, Sendable, Equatable {
        public var objective: String
        public var granularity: String
        public var highFraction: Double
        public var highBits: Int
        /// r: the last r input columns of q/k/v/gate/up are the high block.
        public var highChannels: Int
        /// r_h: the last r_h columns of every head of o_proj's input are the high block.
        public var highChannelsPerHead: Int
        public var kvWeightAware: Bool
        public var normsFused: Bool
        public var embeddingsCentered: Bool
        public var highBlock: String
        public var storage: String
        public var online: [String: String]
        enum CodingKeys: String, CodingKey, CaseIterable {
            case objective, granularity, highFraction = "high_fraction", highBits = "high_bits",
                 highChannels = "high_channels", highChannelsPerHead = "high_channels_per_head",
                 kvWeightAware = "kv_weight_aware", normsFused = "norms_fused", embeddingsCentered = "embeddings_centered",
                 highBlock = "high_block", storage, online
        }
    }

    /// The format version: v1 folders carry none.
    public var formatVersion: Int { version ?? (format == "coquant-packed-v1" ? 1 : 0) }

    /// Reads and checks `quantization_config` of a config.json: nil when there is none, an error naming the file and
    /// the key when it is not one this CoQuant can run.
    public static func load(_ path: String) throws -> QuantizationConfig? {
        guard let data = FileManager.default.contents(atPath: path),
              let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let raw = json["quantization_config"] else { return nil }
        guard let q = raw as? [String: Any] else { throw ModelFileError(path, "quantization_config is not an object") }
        guard q["quant_method"] as? String == "coquant" else {
            throw ModelFileError(path, "quantization_config.quant_method \"\(q["quant_method"] ?? "none")\" is not supported (CoQuant reads its own \"coquant\" folders and unquantized models)")
        }
        try rejectUnknownKeys(q, file: path)
        let config: QuantizationConfig
        do {
            config = try JSONDecoder().decode(QuantizationConfig.self, from: JSONSerialization.data(withJSONObject: q))
        } catch let e as DecodingError {
            throw ModelFileError(path, "quantization_config: \(describe(e))")
        }
        try config.check(path)
        return config
    }

    func check(_ path: String) throws {
        guard ["coquant-packed-v1", "coquant-packed-v2"].contains(format) else {
            throw ModelFileError(path, "quantization_config.format \"\(format)\" is not one this CoQuant reads (coquant-packed-v1, -v2)")
        }
        guard formatVersion <= Self.currentVersion, formatVersion >= 1 else {
            throw ModelFileError(path, "quantization_config.version \(formatVersion) is newer than this CoQuant reads (\(Self.currentVersion))")
        }
        guard (1...8).contains(weights.bits), (1...8).contains(weights.storageBits) else {
            throw ModelFileError(path, "quantization_config.weights.bits \(weights.bits) is outside 1...8")
        }
        if let a = activations, !((2...8).contains(a.bits) && ((2...8).contains(a.downProjBits) || a.downProjBits == 16)) {
            throw ModelFileError(path, "quantization_config.activations.bits \(a.bits) / down_proj_bits \(a.downProjBits) outside 2...8")
        }
        let tables = ["int8-row", "int4-g32", "f16", "f32"]
        if let e = embeddings, !tables.contains(e.format) || e.lmHead != e.format {
            throw ModelFileError(path, "quantization_config.embeddings: unknown storage \"\(e.format)\" / \"\(e.lmHead)\" (one of \(tables.joined(separator: ", ")) for both)")
        }
    }
}

extension QuantizationConfig {
    public init(format: String, version: Int?, method: String, solver: String, scheme: String, weights: Weights,
                embeddings: Embeddings?, modulesNotQuantized: [String], calibration: Calibration, activations: Activations?,
                kvCache: KVCacheConfig?, rotation: Rotation?, subspace: Subspace?, coquantOptions: OpaqueJSON) {
        quantMethod = "coquant"
        self.format = format
        self.version = version
        self.method = method
        self.solver = solver
        self.scheme = scheme
        self.weights = weights
        self.embeddings = embeddings
        self.modulesNotQuantized = modulesNotQuantized
        self.calibration = calibration
        self.activations = activations
        self.kvCache = kvCache
        self.rotation = rotation
        self.subspace = subspace
        self.coquantOptions = coquantOptions
    }

    /// Encodes absent optionals as JSON null (v1 did, and readers of the file expect every key).
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(quantMethod, forKey: .quantMethod)
        try c.encode(format, forKey: .format)
        try c.encodeIfPresent(version, forKey: .version)
        try c.encode(method, forKey: .method)
        try c.encode(solver, forKey: .solver)
        try c.encode(scheme, forKey: .scheme)
        try c.encode(weights, forKey: .weights)
        try c.encodeIfPresent(embeddings, forKey: .embeddings)
        try c.encode(modulesNotQuantized, forKey: .modulesNotQuantized)
        try c.encode(calibration, forKey: .calibration)
        try c.encode(activations, forKey: .activations)
        try c.encode(kvCache, forKey: .kvCache)
        try c.encode(rotation, forKey: .rotation)
        try c.encode(subspace, forKey: .subspace)
        try c.encode(coquantOptions, forKey: .coquantOptions)
    }
}

extension QuantizationConfig.Activations {
    public init(bits: Int, downProjBits: Int, clipRatio: Double, targets: [String]) {
        self.bits = bits; self.downProjBits = downProjBits; symmetric = false; granularity = "per-token"
        self.clipRatio = clipRatio; self.targets = targets
    }
}

extension QuantizationConfig.KVCacheConfig {
    public init(bits: Int, headDim: Int, clipRatio: Double) {
        self.bits = bits; symmetric = false; granularity = "per-token-head"; groupSize = headDim
        self.clipRatio = clipRatio; keys = "post-rope"
    }
}

extension QuantizationConfig.Subspace {
    public init(objective: String, granularity: String, highFraction: Double, highBits: Int, highChannels: Int,
                highChannelsPerHead: Int, kvWeightAware: Bool, embeddingsCentered: Bool, highBlock: String, storage: String,
                online: [String: String]) {
        self.objective = objective; self.granularity = granularity; self.highFraction = highFraction
        self.highBits = highBits; self.highChannels = highChannels; self.highChannelsPerHead = highChannelsPerHead
        self.kvWeightAware = kvWeightAware; normsFused = true; self.embeddingsCentered = embeddingsCentered
        self.highBlock = highBlock; self.storage = storage; self.online = online
    }
}

/// Any JSON value, for the parts of a file kept verbatim.
public enum OpaqueJSON: Codable, Sendable, Equatable {
    case null, bool(Bool), number(Double), string(String), array([OpaqueJSON]), object([String: OpaqueJSON])

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let n = try? c.decode(Double.self) { self = .number(n) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([OpaqueJSON].self) { self = .array(a) }
        else { self = .object(try c.decode([String: OpaqueJSON].self)) }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .number(let n): try c.encode(n)
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }

    /// The value re-encoded as JSON, for a Decodable type that owns its meaning.
    public func decode<T: Decodable>(_: T.Type) throws -> T { try JSONDecoder().decode(T.self, from: JSONEncoder().encode(self)) }

    public init<T: Encodable>(encoding value: T) throws { self = try JSONDecoder().decode(OpaqueJSON.self, from: JSONEncoder().encode(value)) }
}

extension QuantizationConfig {
    /// The keys each object of the file may have: the CodingKeys of its type (`online` and `coquant_options` are
    /// free-form).
    static let schema: [String: [String]] = [
        "": CodingKeys.allCases.map(\.rawValue), "weights": Weights.CodingKeys.allCases.map(\.rawValue),
        "embeddings": Embeddings.CodingKeys.allCases.map(\.rawValue), "calibration": Calibration.CodingKeys.allCases.map(\.rawValue),
        "activations": Activations.CodingKeys.allCases.map(\.rawValue), "kv_cache": KVCacheConfig.CodingKeys.allCases.map(\.rawValue),
        "rotation": Rotation.CodingKeys.allCases.map(\.rawValue), "subspace": Subspace.CodingKeys.allCases.map(\.rawValue),
    ]

    /// Throws for a key the schema does not name, so a folder from a newer CoQuant or a hand edit is refused by name
    /// instead of being half understood.
    static func rejectUnknownKeys(_ q: [String: Any], file: String) throws {
        for (object, known) in schema.sorted(by: { $0.key < $1.key }) {
            guard let dict = object.isEmpty ? q : q[object] as? [String: Any] else { continue }
            if let key = dict.keys.sorted().first(where: { !known.contains($0) }) {
                throw ModelFileError(file, "quantization_config.\(object.isEmpty ? "" : object + ".")\(key): unknown key (this CoQuant knows \(known.sorted().joined(separator: ", ")))")
            }
        }
    }
}

/// "weights.group_size: expected Int" rather than Foundation's multi-line dump.
func describe(_ e: DecodingError) -> String {
    func path(_ p: [CodingKey]) -> String { p.map(\.stringValue).joined(separator: ".") }
    switch e {
    case .keyNotFound(let k, let ctx): return "missing key \(path(ctx.codingPath + [k]))"
    case .typeMismatch(let t, let ctx): return "\(path(ctx.codingPath)): expected \(t)"
    case .valueNotFound(let t, let ctx): return "\(path(ctx.codingPath)): expected \(t), found null"
    case .dataCorrupted(let ctx): return "\(path(ctx.codingPath)): \(ctx.debugDescription)"
    @unknown default: return "\(e)"
    }
}
