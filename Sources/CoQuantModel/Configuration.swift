import Foundation

/// RoPE frequency rule: `default` (θ only) or Meta's `llama3` scaling of the low frequencies.
public struct RopeScaling: Codable, Sendable, Equatable {
    public var ropeType: String
    public var factor: Double?
    public var lowFreqFactor: Double?
    public var highFreqFactor: Double?
    public var originalMaxPositionEmbeddings: Int?
    public var ropeTheta: Double?       // transformers v5 keeps θ inside `rope_parameters`

    enum CodingKeys: String, CodingKey {
        case ropeType = "rope_type"
        case type
        case factor
        case lowFreqFactor = "low_freq_factor"
        case highFreqFactor = "high_freq_factor"
        case originalMaxPositionEmbeddings = "original_max_position_embeddings"
        case ropeTheta = "rope_theta"
    }

    public init(ropeType: String, factor: Double? = nil, lowFreqFactor: Double? = nil, highFreqFactor: Double? = nil,
                originalMaxPositionEmbeddings: Int? = nil, ropeTheta: Double? = nil) {
        self.ropeType = ropeType
        self.factor = factor
        self.lowFreqFactor = lowFreqFactor
        self.highFreqFactor = highFreqFactor
        self.originalMaxPositionEmbeddings = originalMaxPositionEmbeddings
        self.ropeTheta = ropeTheta
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        // Older checkpoints spell the key `type`.
        ropeType = try c.decodeIfPresent(String.self, forKey: .ropeType) ?? c.decodeIfPresent(String.self, forKey: .type) ?? "default"
        factor = try c.decodeIfPresent(Double.self, forKey: .factor)
        lowFreqFactor = try c.decodeIfPresent(Double.self, forKey: .lowFreqFactor)
        highFreqFactor = try c.decodeIfPresent(Double.self, forKey: .highFreqFactor)
        originalMaxPositionEmbeddings = try c.decodeIfPresent(Int.self, forKey: .originalMaxPositionEmbeddings)
        ropeTheta = try c.decodeIfPresent(Double.self, forKey: .ropeTheta)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(ropeType, forKey: .ropeType)
        try c.encodeIfPresent(factor, forKey: .factor)
        try c.encodeIfPresent(lowFreqFactor, forKey: .lowFreqFactor)
        try c.encodeIfPresent(highFreqFactor, forKey: .highFreqFactor)
        try c.encodeIfPresent(originalMaxPositionEmbeddings, forKey: .originalMaxPositionEmbeddings)
        try c.encodeIfPresent(ropeTheta, forKey: .ropeTheta)
    }
}

/// `config.json` of a Llama- or Qwen2-family checkpoint, with the checkpoint's own key names.
public struct ModelConfiguration: Codable, Sendable, Equatable {
    public var modelType: String
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var numHiddenLayers: Int
    public var numAttentionHeads: Int
    public var numKeyValueHeads: Int
    public var headDim: Int
    public var rmsNormEps: Double
    public var ropeTheta: Double
    public var ropeScaling: RopeScaling?
    public var vocabSize: Int
    public var maxPositionEmbeddings: Int
    public var tieWordEmbeddings: Bool
    public var attentionBias: Bool      // llama: bias on q, k, v and o
    public var bosTokenId: Int?
    public var eosTokenIds: [Int]

    /// Qwen2 always has q/k/v biases (and none on o_proj); Llama has them on all four when `attention_bias`.
    public var qkvBias: Bool { modelType == "qwen2" || attentionBias }
    public var oBias: Bool { modelType != "qwen2" && attentionBias }

    enum CodingKeys: String, CodingKey {
        case modelType = "model_type"
        case hiddenSize = "hidden_size"
        case intermediateSize = "intermediate_size"
        case numHiddenLayers = "num_hidden_layers"
        case numAttentionHeads = "num_attention_heads"
        case numKeyValueHeads = "num_key_value_heads"
        case headDim = "head_dim"
        case rmsNormEps = "rms_norm_eps"
        case ropeTheta = "rope_theta"
        case ropeScaling = "rope_scaling"
        case ropeParameters = "rope_parameters"
        case vocabSize = "vocab_size"
        case maxPositionEmbeddings = "max_position_embeddings"
        case tieWordEmbeddings = "tie_word_embeddings"
        case attentionBias = "attention_bias"
        case bosTokenId = "bos_token_id"
        case eosTokenId = "eos_token_id"
    }

    public static let supportedTypes = ["llama", "qwen2"]

    public init(modelType: String, hiddenSize: Int, intermediateSize: Int, numHiddenLayers: Int, numAttentionHeads: Int,
                numKeyValueHeads: Int, headDim: Int? = nil, rmsNormEps: Double, ropeTheta: Double,
                ropeScaling: RopeScaling? = nil, vocabSize: Int, maxPositionEmbeddings: Int, tieWordEmbeddings: Bool,
                attentionBias: Bool = false, bosTokenId: Int? = nil, eosTokenIds: [Int] = []) {
        self.modelType = modelType
        self.hiddenSize = hiddenSize
        self.intermediateSize = intermediateSize
        self.numHiddenLayers = numHiddenLayers
        self.numAttentionHeads = numAttentionHeads
        self.numKeyValueHeads = numKeyValueHeads
        self.headDim = headDim ?? hiddenSize / numAttentionHeads
        self.rmsNormEps = rmsNormEps
        self.ropeTheta = ropeTheta
        self.ropeScaling = ropeScaling
        self.vocabSize = vocabSize
        self.maxPositionEmbeddings = maxPositionEmbeddings
        self.tieWordEmbeddings = tieWordEmbeddings
        self.attentionBias = attentionBias
        self.bosTokenId = bosTokenId
        self.eosTokenIds = eosTokenIds
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        modelType = try c.decode(String.self, forKey: .modelType)
        hiddenSize = try c.decode(Int.self, forKey: .hiddenSize)
        intermediateSize = try c.decode(Int.self, forKey: .intermediateSize)
        numHiddenLayers = try c.decode(Int.self, forKey: .numHiddenLayers)
        numAttentionHeads = try c.decode(Int.self, forKey: .numAttentionHeads)
        numKeyValueHeads = try c.decodeIfPresent(Int.self, forKey: .numKeyValueHeads) ?? numAttentionHeads
        headDim = try c.decodeIfPresent(Int.self, forKey: .headDim) ?? hiddenSize / max(numAttentionHeads, 1)
        rmsNormEps = try c.decodeIfPresent(Double.self, forKey: .rmsNormEps) ?? 1e-6
        // transformers v4 writes `rope_theta` + `rope_scaling`; v5 writes both inside `rope_parameters`.
        let parameters = try c.decodeIfPresent(RopeScaling.self, forKey: .ropeParameters)
        let scaling = try c.decodeIfPresent(RopeScaling.self, forKey: .ropeScaling) ?? parameters
        ropeTheta = try c.decodeIfPresent(Double.self, forKey: .ropeTheta) ?? parameters?.ropeTheta ?? 10000
        ropeScaling = scaling.flatMap { s in
            var s = s
            s.ropeTheta = nil       // θ lives in `ropeTheta`, one place only
            return s.ropeType == "default" ? nil : s
        }
        vocabSize = try c.decode(Int.self, forKey: .vocabSize)
        maxPositionEmbeddings = try c.decodeIfPresent(Int.self, forKey: .maxPositionEmbeddings) ?? 2048
        tieWordEmbeddings = try c.decodeIfPresent(Bool.self, forKey: .tieWordEmbeddings) ?? false
        attentionBias = try c.decodeIfPresent(Bool.self, forKey: .attentionBias) ?? false
        bosTokenId = try c.decodeIfPresent(Int.self, forKey: .bosTokenId)
        if let one = try? c.decodeIfPresent(Int.self, forKey: .eosTokenId) {
            eosTokenIds = [one]
        } else {
            eosTokenIds = (try? c.decodeIfPresent([Int].self, forKey: .eosTokenId)) ?? []
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(modelType, forKey: .modelType)
        try c.encode(hiddenSize, forKey: .hiddenSize)
        try c.encode(intermediateSize, forKey: .intermediateSize)
        try c.encode(numHiddenLayers, forKey: .numHiddenLayers)
        try c.encode(numAttentionHeads, forKey: .numAttentionHeads)
        try c.encode(numKeyValueHeads, forKey: .numKeyValueHeads)
        try c.encode(headDim, forKey: .headDim)
        try c.encode(rmsNormEps, forKey: .rmsNormEps)
        try c.encode(ropeTheta, forKey: .ropeTheta)
        try c.encodeIfPresent(ropeScaling, forKey: .ropeScaling)
        try c.encode(vocabSize, forKey: .vocabSize)
        try c.encode(maxPositionEmbeddings, forKey: .maxPositionEmbeddings)
        try c.encode(tieWordEmbeddings, forKey: .tieWordEmbeddings)
        try c.encode(attentionBias, forKey: .attentionBias)
        try c.encodeIfPresent(bosTokenId, forKey: .bosTokenId)
        try c.encode(eosTokenIds, forKey: .eosTokenId)
    }

    /// Reads and checks `config.json`.
    public static func load(_ path: String) throws -> ModelConfiguration {
        guard FileManager.default.fileExists(atPath: path) else {
            throw ModelFileError(path, "no such file: a Hugging Face model folder needs config.json (or pass a GGUF file)")
        }
        guard let data = FileManager.default.contents(atPath: path) else { throw ModelFileError(path, "cannot read") }
        let config: ModelConfiguration
        do {
            config = try JSONDecoder().decode(ModelConfiguration.self, from: data)
        } catch let DecodingError.keyNotFound(key, _) {
            throw ModelFileError(path, "missing key \"\(key.stringValue)\"")
        } catch let DecodingError.typeMismatch(_, ctx) {
            throw ModelFileError(path, "wrong type for \"\(ctx.codingPath.map(\.stringValue).joined(separator: "."))\"")
        } catch {
            throw ModelFileError(path, "not a valid config.json (\(error))")
        }
        try config.validate(file: path)
        return config
    }

    public func validate(file: String) throws {
        guard Self.supportedTypes.contains(modelType) else {
            throw ModelFileError(file, "unsupported architecture \"\(modelType)\" (supported: \(Self.supportedTypes.joined(separator: ", ")))")
        }
        guard hiddenSize > 0, intermediateSize > 0, numHiddenLayers > 0, numAttentionHeads > 0, numKeyValueHeads > 0,
              headDim > 0, vocabSize > 0 else { throw ModelFileError(file, "dimensions must be positive") }
        guard numAttentionHeads % numKeyValueHeads == 0 else {
            throw ModelFileError(file, "num_attention_heads \(numAttentionHeads) is not a multiple of num_key_value_heads \(numKeyValueHeads)")
        }
        guard headDim % 2 == 0 else { throw ModelFileError(file, "head_dim \(headDim) must be even for RoPE") }
        if let s = ropeScaling, s.ropeType != "llama3" {
            throw ModelFileError(file, "unsupported rope_scaling type \"\(s.ropeType)\" (supported: default, llama3)")
        }
    }
}
