import Foundation

extension Tokenizer {
    /// The `tokenizer.*` metadata of a GGUF, in the types llama.cpp reads them with, for `GGUFWriter.set(_:)`.
    ///
    /// A tokenizer read from a GGUF writes back that file's values: its `tokenizer.ggml.pre` name, token types and
    /// special ids (padding, unknown, end-of-turn, …) unchanged. One read from `tokenizer.json` gets what
    /// llama.cpp's converter would write: the pre-tokenizer's llama.cpp name, control (3) for special added tokens,
    /// user-defined (4) for the other added tokens, normal (1) for the rest, and "[PAD<id>]" of type unused (5) for
    /// ids without a token (llama.cpp needs every id spelled, and spelled once).
    ///
    /// Not expressible in GGUF and so not carried over: an NFC normalizer, lstrip/rstrip on added tokens,
    /// `ignore_merges` on a pre-tokenizer other than Llama-3's, merges of tokens that contain a space, and added
    /// prefix/suffix ids other than exactly [bos] / [eos]. Note also that `Tokenizer(gguf:)` reads "smollm" without
    /// its digit split (see there), so a `tokenizer.json` with Digits + ByteLevel does not encode the same after a
    /// round trip through our reader, though it does in llama.cpp.
    public func ggufMetadata(chatTemplate: String?) -> [(String, GGUFWriter.Value)] {
        let spec = self.spec
        let source = spec.gguf

        // Later added tokens win, as in `init(_ spec:)`.
        let addedType = Dictionary(spec.added.map { ($0.id, Int32($0.special ? 3 : 4)) }, uniquingKeysWith: { _, b in b })
        var tokens: [String] = []
        var types: [Int32] = []
        tokens.reserveCapacity(vocabSize)
        types.reserveCapacity(vocabSize)
        for id in 0..<vocabSize {
            if let t = token(id) {
                tokens.append(t)
                types.append(addedType[id] ?? 1)
            } else {
                tokens.append("[PAD\(id)]")
                types.append(5)
            }
        }
        if let fileTypes = source?.tokenTypes, fileTypes.count == vocabSize { types = fileTypes }

        let merges = spec.merges.map { a, b in String(decoding: a + [0x20] + b, as: UTF8.self) }

        let ids: [(key: String, id: Int)]
        if let source {
            ids = source.tokenIds
        } else {
            ids = [("tokenizer.ggml.bos_token_id", spec.bosTokenId), ("tokenizer.ggml.eos_token_id", spec.eosTokenIds.first),
                   ("tokenizer.ggml.unknown_token_id", spec.unkId)].compactMap { key, id in id.map { (key, $0) } }
        }
        let eos = ids.first { $0.key == "tokenizer.ggml.eos_token_id" }?.id

        var entries: [(String, GGUFWriter.Value)] = [
            ("tokenizer.ggml.model", .string("gpt2")),
            ("tokenizer.ggml.pre", .string(source?.pre ?? Self.llamaCppPreName(spec.preTokenizer))),
            ("tokenizer.ggml.tokens", .strings(tokens)),
            ("tokenizer.ggml.token_type", .i32s(types)),
            ("tokenizer.ggml.merges", .strings(merges)),
        ]
        entries += ids.map { ($0.key, .u32(UInt32($0.id))) }
        entries.append(("tokenizer.ggml.add_bos_token", .bool(addsBOS)))
        entries.append(("tokenizer.ggml.add_eos_token", .bool(eos != nil && spec.suffixIds == [eos!])))
        if let chatTemplate { entries.append(("tokenizer.chat_template", .string(chatTemplate))) }
        return entries
    }

    /// The name llama.cpp's `llama_vocab::load` maps to the same pre-tokenizer regexes.
    static func llamaCppPreName(_ kind: PreTokenizer) -> String {
        switch kind {
        case .gpt2: return "gpt-2"
        case .gpt2Digits: return "smollm"   // digits split off, then the GPT-2 regex
        case .qwen2: return "qwen2"
        case .llama3: return "llama-bpe"
        }
    }
}

/// What a GGUF vocabulary holds that encoding does not use, kept so that `ggufMetadata` writes it back unchanged.
struct GGUFVocabulary {
    /// `tokenizer.ggml.pre` as the file spells it; several names map to one `PreTokenizer`.
    var pre: String
    /// `tokenizer.ggml.token_type`, which may hold types our tokenizer has no use for (unused 5, byte 6, …).
    var tokenTypes: [Int32]?
    /// The file's `tokenizer.ggml.*_token_id` entries, in `tokenIdKeys` order.
    var tokenIds: [(key: String, id: Int)]

    /// The special-id keys llama.cpp reads or has read, in its order ("seperator" is its spelling; cls and the last
    /// three are older keys).
    static let tokenIdKeys = ["bos", "eos", "eot", "eom", "unknown", "seperator", "padding", "cls", "mask",
                              "fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep", "prefix", "suffix", "middle"]
        .map { "tokenizer.ggml.\($0)_token_id" }

    init(pre: String, tokenTypes: [Int32]?, metadata: [String: GGUFValue], vocabSize: Int) {
        self.pre = pre
        self.tokenTypes = tokenTypes
        // An id outside the vocabulary is dropped, as llama.cpp ignores it (with a warning).
        tokenIds = Self.tokenIdKeys.compactMap { key in
            guard let id = metadata[key]?.int, id >= 0, id < vocabSize else { return nil }
            return (key, id)
        }
    }
}
