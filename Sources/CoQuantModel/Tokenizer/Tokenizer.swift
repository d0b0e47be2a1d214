import Foundation

/// Byte-level BPE tokenizer (GPT-2 / Llama-3 / Qwen2 family), loaded from a Hugging Face `tokenizer.json` or from
/// GGUF metadata, giving the same ids as the `tokenizers` library.
///
/// Encoding: added tokens are cut out of the raw text first (leftmost-longest), the text between them is
/// pre-tokenized (`PreTokenizer`), each piece is BPE-encoded from its UTF-8 bytes, and the post-processor's
/// special tokens (BOS) are put around the result.
public final class Tokenizer: @unchecked Sendable {
    public let vocabSize: Int
    public let bosTokenId: Int?
    /// Generation stops on any of these: the declared EOS first, then the file's other end-of-turn/end-of-text
    /// control tokens (as llama.cpp does), since chat models end turns with e.g. `<|eot_id|>` or `<|im_end|>` while
    /// the declared EOS may be the base model's `<|end_of_text|>`.
    public let eosTokenIds: [Int]
    public let addsBOS: Bool
    public var preTokenizerName: String { preTokenizer.rawValue }

    private let preTokenizer: PreTokenizer
    private let bpe: BPE
    private let tokens: [String?]
    /// What each id decodes to (see `ByteLevel.bytes(of:)`).
    private let tokenBytes: [[UInt8]]
    private let special: [Bool]
    /// Added tokens with `normalized: false` are matched in the raw text, the others in the normalized text between
    /// those, as `tokenizers`' AddedVocabulary does.
    private let rawAddedTokens: AddedTokenMatcher
    private let normalizedAddedTokens: AddedTokenMatcher
    private let nfc: Bool
    private let prefixIds: [Int]
    private let suffixIds: [Int]
    /// What the tokenizer was built from, kept so that `write(tokenizerJSON:tokenizerConfig:)` can reproduce it.
    let spec: Spec

    public func token(_ id: Int) -> String? {
        id >= 0 && id < tokens.count ? tokens[id] : nil
    }

    // MARK: Encoding

    public func encode(_ text: String, addSpecialTokens: Bool = true) -> [Int] {
        var out: [Int] = []
        out.reserveCapacity(text.utf8.count / 3 + 4)
        if addSpecialTokens { out += prefixIds }
        // Per call rather than per tokenizer: no locking, and one call on a long text is where a cache pays off.
        var cache: [[UInt8]: [Int]] = [:]
        let bytes = Array(text.utf8)
        rawAddedTokens.split(bytes[...]) { range in
            guard nfc || !normalizedAddedTokens.isEmpty else {
                encodeText(bytes[range], into: &out, cache: &cache)
                return
            }
            let normalized = nfc ? Self.nfc(bytes[range]) : Array(bytes[range])
            normalizedAddedTokens.split(normalized[...]) { r in
                encodeText(normalized[r], into: &out, cache: &cache)
            } token: { out.append($0) }
        } token: { out.append($0) }
        if addSpecialTokens { out += suffixIds }
        return out
    }

    /// Pre-tokenizes text that contains no added token and BPE-encodes each piece.
    private func encodeText(_ bytes: ArraySlice<UInt8>, into out: inout [Int], cache: inout [[UInt8]: [Int]]) {
        // Decode the (valid, it came from a String) UTF-8 once into code points, classes and byte offsets.
        var scalars: [UInt32] = []
        var classes: [UInt8] = []
        var offsets: [Int] = []
        scalars.reserveCapacity(bytes.count)
        classes.reserveCapacity(bytes.count)
        offsets.reserveCapacity(bytes.count + 1)
        var i = bytes.startIndex
        while i < bytes.endIndex {
            let b0 = UInt32(bytes[i])
            var v: UInt32, len: Int
            if b0 < 0x80 {
                v = b0; len = 1
            } else if b0 < 0xE0 {
                v = b0 & 0x1F; len = 2
            } else if b0 < 0xF0 {
                v = b0 & 0x0F; len = 3
            } else {
                v = b0 & 0x07; len = 4
            }
            for k in 1..<len { v = v << 6 | UInt32(bytes[i + k] & 0x3F) }
            scalars.append(v)
            classes.append(PreTokenizer.characterClass(v))
            offsets.append(i)
            i += len
        }
        offsets.append(bytes.endIndex)

        var pieceEnds: [Int] = []
        scalars.withUnsafeBufferPointer { s in
            classes.withUnsafeBufferPointer { c in
                preTokenizer.split(s, c) { _, end in pieceEnds.append(offsets[end]) }
            }
        }
        var start = bytes.startIndex
        for end in pieceEnds {
            let piece = bytes[start..<end]
            start = end
            if piece.count == 1 {
                bpe.encode(piece, into: &out)   // nothing to merge; a cache lookup would cost more than it saves
            } else {
                let key = Array(piece)
                if let ids = cache[key] {
                    out += ids
                } else {
                    var ids: [Int] = []
                    bpe.encode(piece, into: &ids)
                    cache[key] = ids
                    out += ids
                }
            }
        }
    }

    private static func nfc(_ bytes: ArraySlice<UInt8>) -> [UInt8] {
        if !bytes.contains(where: { $0 >= 0x80 }) { return Array(bytes) }
        return Array(String(decoding: bytes, as: UTF8.self).precomposedStringWithCanonicalMapping.utf8)
    }

    // MARK: Decoding

    /// Concatenates the tokens' bytes and decodes them as UTF-8, invalid sequences becoming U+FFFD (as
    /// `String::from_utf8_lossy` does in `tokenizers`), so a prefix of a generation that ends inside a multi-byte
    /// character decodes with a trailing U+FFFD.
    public func decode(_ ids: [Int], skipSpecialTokens: Bool = false) -> String {
        var bytes: [UInt8] = []
        for id in ids where id >= 0 && id < tokenBytes.count {
            if skipSpecialTokens && special[id] { continue }
            bytes += tokenBytes[id]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    // MARK: Loading

    /// Everything a loader works out, before the tokenizer is assembled (and what `write` exports).
    struct Spec {
        var file: String
        var preTokenizer: PreTokenizer
        var vocab: [[UInt8]: Int]               // byte-level spelling (UTF-8) → id
        var merges: [([UInt8], [UInt8])]
        var ignoreMerges: Bool
        var unkId: Int?
        var added: [AddedToken]
        var nfc: Bool
        var prefixIds: [Int]
        var suffixIds: [Int]
        var bosTokenId: Int?
        var eosTokenIds: [Int]                   // declared ones; end-of-turn markers are added to these
        var size: Int                            // at least 1 + the largest id
        /// Set when built from GGUF metadata: what that held beyond the above, for `ggufMetadata`.
        var gguf: GGUFVocabulary? = nil
        /// The Jinja chat template (`tokenizer.chat_template`, or tokenizer_config.json's `chat_template`), carried
        /// into the files a quantized folder and its exports write; encoding does not use it.
        var chatTemplate: String? = nil
    }

    public var chatTemplate: String? { spec.chatTemplate }

    private init(_ spec: Spec) throws {
        self.spec = spec
        bpe = try BPE(vocab: spec.vocab, merges: spec.merges, ignoreMerges: spec.ignoreMerges, unkId: spec.unkId,
                      file: spec.file)
        var tokens = [String?](repeating: nil, count: spec.size)
        for (spelling, id) in spec.vocab { tokens[id] = String(decoding: spelling, as: UTF8.self) }
        var special = [Bool](repeating: false, count: spec.size)
        for t in spec.added {
            tokens[t.id] = String(decoding: t.content, as: UTF8.self)
            special[t.id] = t.special
        }
        self.tokens = tokens
        self.special = special
        tokenBytes = tokens.map { $0.map(ByteLevel.bytes(of:)) ?? [] }
        vocabSize = spec.size
        preTokenizer = spec.preTokenizer
        rawAddedTokens = AddedTokenMatcher(spec.added.filter { !$0.normalized })
        normalizedAddedTokens = AddedTokenMatcher(spec.added.filter { $0.normalized })
        nfc = spec.nfc
        prefixIds = spec.prefixIds
        suffixIds = spec.suffixIds
        bosTokenId = spec.bosTokenId
        addsBOS = spec.bosTokenId != nil && spec.prefixIds.first == spec.bosTokenId

        var eos: [Int] = []
        for id in spec.eosTokenIds where !eos.contains(id) { eos.append(id) }
        for t in spec.added.sorted(by: { $0.id < $1.id })
        where t.special && Self.endMarkers.contains(String(decoding: t.content, as: UTF8.self)) && !eos.contains(t.id) {
            eos.append(t.id)
        }
        eosTokenIds = eos
    }

    private static let endMarkers: Set<String> = [
        "<|endoftext|>", "<|end_of_text|>", "<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>",
    ]

    /// Loads a Hugging Face `tokenizer.json`; `tokenizer_config.json` supplies `bos_token`, `eos_token` and, where
    /// present, `add_bos_token` / `add_eos_token` (which override the post-processor, as transformers does when it
    /// rebuilds the template from them).
    public convenience init(tokenizerJSON path: String, tokenizerConfig configPath: String? = nil) throws {
        let root = try Self.readJSONObject(path)
        guard let model = root["model"] as? [String: Any] else { throw ModelFileError(path, "no 'model' object") }
        let type = model["type"] as? String ?? "(none)"
        guard type == "BPE" else {
            throw ModelFileError(path, "unsupported model type '\(type)' (only byte-level BPE is supported)")
        }
        if model["byte_fallback"] as? Bool == true {
            throw ModelFileError(path, "BPE byte_fallback is not supported (only byte-level BPE)")
        }
        if let dropout = model["dropout"] as? Double, dropout > 0 {
            throw ModelFileError(path, "BPE dropout \(dropout) is not supported")
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let s = model[key] as? String, !s.isEmpty {
                throw ModelFileError(path, "BPE \(key) '\(s)' is not supported")
            }
        }

        guard let vocabObject = model["vocab"] as? [String: Any] else {
            throw ModelFileError(path, "model.vocab is missing or not an object")
        }
        var vocab: [[UInt8]: Int] = [:]
        vocab.reserveCapacity(vocabObject.count)
        var size = 0
        for (token, value) in vocabObject {
            guard let id = value as? Int, id >= 0 else {
                throw ModelFileError(path, "model.vocab['\(token)'] is not a non-negative integer id")
            }
            vocab[Array(token.utf8)] = id
            size = max(size, id + 1)
        }

        guard let mergeList = model["merges"] as? [Any] else {
            throw ModelFileError(path, "model.merges is missing or not an array")
        }
        var merges: [([UInt8], [UInt8])] = []
        merges.reserveCapacity(mergeList.count)
        for (i, m) in mergeList.enumerated() {
            if let s = m as? String {
                merges.append(try Self.splitMerge(s, index: i, file: path))
            } else if let pair = m as? [String], pair.count == 2 {
                merges.append((Array(pair[0].utf8), Array(pair[1].utf8)))
            } else {
                throw ModelFileError(path, "model.merges[\(i)] is neither \"a b\" nor [\"a\", \"b\"]")
            }
        }

        var added: [AddedToken] = []
        for (i, entry) in (root["added_tokens"] as? [[String: Any]] ?? []).enumerated() {
            guard let id = entry["id"] as? Int, id >= 0, let content = entry["content"] as? String, !content.isEmpty else {
                throw ModelFileError(path, "added_tokens[\(i)] has no id or content")
            }
            if entry["single_word"] as? Bool == true {
                throw ModelFileError(path, "added token '\(content)': single_word is not supported")
            }
            added.append(AddedToken(content: Array(content.utf8), id: id, special: entry["special"] as? Bool ?? false,
                                    lstrip: entry["lstrip"] as? Bool ?? false, rstrip: entry["rstrip"] as? Bool ?? false,
                                    normalized: entry["normalized"] as? Bool ?? !(entry["special"] as? Bool ?? false)))
            size = max(size, id + 1)
        }
        func id(of content: String) -> Int? {
            let bytes = Array(content.utf8)
            return added.first(where: { $0.content == bytes })?.id ?? vocab[bytes]
        }

        let unkId: Int?
        if let unk = model["unk_token"] as? String {
            guard let u = id(of: unk) else { throw ModelFileError(path, "unk_token '\(unk)' is not in the vocabulary") }
            unkId = u
        } else {
            unkId = nil
        }

        let nfc = try Self.normalizer(root["normalizer"], file: path)
        let preTokenizer = try Self.preTokenizer(root["pre_tokenizer"], file: path)
        try Self.checkDecoder(root["decoder"], file: path)
        var (prefixIds, suffixIds) = try Self.template(root["post_processor"], file: path)

        var bosTokenId: Int? = nil, eosTokenId: Int? = nil
        var chatTemplate: String?
        if let configPath {
            let config = try Self.readJSONObject(configPath)
            chatTemplate = config["chat_template"] as? String
            func tokenId(_ key: String) throws -> Int? {
                // Either a string or a serialized AddedToken {"content": ...}.
                guard let value = config[key], !(value is NSNull) else { return nil }
                guard let content = value as? String ?? (value as? [String: Any])?["content"] as? String else {
                    throw ModelFileError(configPath, "'\(key)' is neither a string nor an object with 'content'")
                }
                guard let id = id(of: content) else {
                    throw ModelFileError(configPath, "\(key) '\(content)' is not in the vocabulary of \(path)")
                }
                return id
            }
            bosTokenId = try tokenId("bos_token")
            eosTokenId = try tokenId("eos_token")
            if let add = config["add_bos_token"] as? Bool {
                guard !add || bosTokenId != nil else { throw ModelFileError(configPath, "add_bos_token without bos_token") }
                prefixIds = add ? [bosTokenId!] : []
            }
            if let add = config["add_eos_token"] as? Bool {
                guard !add || eosTokenId != nil else { throw ModelFileError(configPath, "add_eos_token without eos_token") }
                suffixIds = add ? [eosTokenId!] : []
            }
        }
        if bosTokenId == nil, let first = prefixIds.first { bosTokenId = first }

        try self.init(Spec(file: path, preTokenizer: preTokenizer, vocab: vocab, merges: merges,
                           ignoreMerges: model["ignore_merges"] as? Bool ?? false, unkId: unkId, added: added, nfc: nfc,
                           prefixIds: prefixIds, suffixIds: suffixIds, bosTokenId: bosTokenId,
                           eosTokenIds: eosTokenId.map { [$0] } ?? [],
                           size: size, chatTemplate: chatTemplate))
    }

    /// Builds the tokenizer from `tokenizer.ggml.*` metadata, the way transformers' GGUF converter does (which is
    /// what the reference fixtures were made with); where the two differ from llama.cpp, the comments say so.
    public convenience init(gguf: GGUFFile) throws {
        let md = gguf.metadata
        let path = gguf.path
        let model = md["tokenizer.ggml.model"]?.string ?? "(missing)"
        guard model == "gpt2" else {
            throw ModelFileError(path, "tokenizer.ggml.model '\(model)' is not supported (only byte-level BPE, 'gpt2')")
        }
        // llama.cpp treats a missing `pre` as "default" (the GPT-2 regex) and warns.
        let pre = md["tokenizer.ggml.pre"]?.string ?? "default"
        let preTokenizer: PreTokenizer
        var ignoreMerges = false
        var addBOSDefault = false
        switch pre {
        case "gpt2", "gpt-2", "default":   // "gpt-2" is llama.cpp's name for the GPT-2 regex
            preTokenizer = .gpt2
        case "smollm":
            // llama.cpp's "smollm" (and upstream SmolLM2's tokenizer.json) split off every digit before the GPT-2
            // regex. transformers' GGUF converter does not: it uses plain ByteLevel(use_regex=true). We follow
            // transformers, since the reference ids (and the perplexities computed from them) come from it. The two
            // agree on most text but not on whitespace runs containing newlines before a digit: " \n\n\n 1st" is
            // [Ġ, ĊĊĊ, Ġ, 1, st] here and [ĠĊĊ, ĊĠ, 1, st] with the digit split (WikiText-2 test: 304,986 vs 304,978
            // tokens; see fixtures/smollm2/README.md, "Known divergence").
            preTokenizer = .gpt2
        case "qwen2":
            preTokenizer = .qwen2
        case "llama-bpe", "llama3":
            // llama.cpp's settings for this pre-tokenizer; upstream Llama-3 tokenizer.json files have
            // ignore_merges too (it changes none of the fixture ids).
            preTokenizer = .llama3
            ignoreMerges = true
            addBOSDefault = true
        default:
            throw ModelFileError(path, "tokenizer.ggml.pre '\(pre)' is not supported (supported: gpt2, gpt-2, default, smollm, qwen2, llama-bpe, llama3)")
        }

        guard let tokenValues = md["tokenizer.ggml.tokens"]?.array else {
            throw ModelFileError(path, "tokenizer.ggml.tokens is missing or not an array")
        }
        var tokens: [String] = []
        tokens.reserveCapacity(tokenValues.count)
        for (i, v) in tokenValues.enumerated() {
            guard let s = v.string else { throw ModelFileError(path, "tokenizer.ggml.tokens[\(i)] is not a string") }
            tokens.append(s)
        }
        var vocab: [[UInt8]: Int] = [:]
        vocab.reserveCapacity(tokens.count)
        for (id, t) in tokens.enumerated() { vocab[Array(t.utf8)] = id }   // a repeated token keeps its last id, as in transformers

        guard let mergeValues = md["tokenizer.ggml.merges"]?.array else {
            throw ModelFileError(path, "tokenizer.ggml.merges is missing or not an array")
        }
        var merges: [([UInt8], [UInt8])] = []
        merges.reserveCapacity(mergeValues.count)
        for (i, v) in mergeValues.enumerated() {
            guard let s = v.string else { throw ModelFileError(path, "tokenizer.ggml.merges[\(i)] is not a string") }
            merges.append(try Self.splitMerge(s, index: i, file: path))
        }

        // Control tokens (type 3) are special added tokens, user-defined ones (type 4, e.g. Qwen's <tool_call>) plain
        // added tokens: both are matched whole in the text. llama.cpp does the same with these types.
        var added: [AddedToken] = []
        var tokenTypes: [Int32]? = nil
        if let types = md["tokenizer.ggml.token_type"]?.array {
            guard types.count == tokens.count else {
                throw ModelFileError(path, "tokenizer.ggml.token_type has \(types.count) entries for \(tokens.count) tokens")
            }
            for (id, t) in types.enumerated() {
                guard let type = t.int else { throw ModelFileError(path, "tokenizer.ggml.token_type[\(id)] is not an integer") }
                if (type == 3 || type == 4) && !tokens[id].isEmpty {
                    added.append(AddedToken(content: Array(tokens[id].utf8), id: id, special: type == 3,
                                            lstrip: false, rstrip: false, normalized: false))
                }
            }
            tokenTypes = types.map { Int32(clamping: $0.int ?? 0) }   // all integers, checked above
        }

        func tokenId(_ key: String) throws -> Int? {
            guard let v = md[key] else { return nil }
            guard let id = v.int, id >= 0, id < tokens.count else {
                throw ModelFileError(path, "\(key) \(v) is not a token id (vocabulary size \(tokens.count))")
            }
            return id
        }
        let bos = try tokenId("tokenizer.ggml.bos_token_id")
        let eos = try tokenId("tokenizer.ggml.eos_token_id")
        // The file's flags win; llama.cpp's defaults otherwise.
        let addBOS = md["tokenizer.ggml.add_bos_token"]?.bool ?? addBOSDefault
        let addEOS = md["tokenizer.ggml.add_eos_token"]?.bool ?? false
        if addBOS && bos == nil { throw ModelFileError(path, "tokenizer.ggml.add_bos_token is set but there is no bos_token_id") }
        if addEOS && eos == nil { throw ModelFileError(path, "tokenizer.ggml.add_eos_token is set but there is no eos_token_id") }

        let eosIds = try ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"]
            .compactMap(tokenId)

        try self.init(Spec(file: path, preTokenizer: preTokenizer, vocab: vocab, merges: merges, ignoreMerges: ignoreMerges,
                           unkId: nil, added: added, nfc: false, prefixIds: addBOS ? [bos!] : [],
                           suffixIds: addEOS ? [eos!] : [], bosTokenId: bos, eosTokenIds: eosIds, size: tokens.count,
                           gguf: GGUFVocabulary(pre: pre, tokenTypes: tokenTypes, metadata: md, vocabSize: tokens.count),
                           chatTemplate: md["tokenizer.chat_template"]?.string))
    }

    // MARK: tokenizer.json pieces

    private static func readJSONObject(_ path: String) throws -> [String: Any] {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw ModelFileError(path, "cannot read (\(FileManager.default.fileExists(atPath: path) ? "\(error)" : "no such file"))")
        }
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: data)
        } catch {
            throw ModelFileError(path, "not valid JSON (\(error))")
        }
        guard let dict = object as? [String: Any] else { throw ModelFileError(path, "top level is not a JSON object") }
        return dict
    }

    /// "a b" → (a, b); `tokenizers` rejects a merge line that does not split into exactly two parts on spaces.
    private static func splitMerge(_ s: String, index: Int, file: String) throws -> ([UInt8], [UInt8]) {
        let parts = s.utf8.split(separator: 0x20, omittingEmptySubsequences: false)
        guard parts.count == 2 else { throw ModelFileError(file, "merge \(index) '\(s)' is not two tokens separated by a space") }
        return (Array(parts[0]), Array(parts[1]))
    }

    /// Short JSON rendering of a pipeline component, to name it in an error.
    private static func describe(_ value: Any?) -> String {
        guard let value, !(value is NSNull) else { return "null" }
        guard let data = try? JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .fragmentsAllowed]) else {
            return "\(value)"
        }
        let s = String(decoding: data, as: UTF8.self)
        return s.count > 400 ? s.prefix(400) + "…" : s
    }

    /// True for NFC, false for none; anything else is unsupported.
    private static func normalizer(_ value: Any?, file: String) throws -> Bool {
        guard let value, !(value is NSNull) else { return false }
        if let o = value as? [String: Any] {
            switch o["type"] as? String {
            case "NFC": return true
            case "Sequence":
                let parts = o["normalizers"] as? [Any] ?? []
                if parts.isEmpty { return false }
                if parts.count == 1 { return try normalizer(parts[0], file: file) }
            default: break
            }
        }
        throw ModelFileError(file, "unsupported normalizer \(describe(value)) (supported: none, NFC)")
    }

    private static func preTokenizer(_ value: Any?, file: String) throws -> PreTokenizer {
        func object(_ v: Any?, _ type: String) -> [String: Any]? {
            guard let o = v as? [String: Any], o["type"] as? String == type else { return nil }
            return o
        }
        func byteLevel(_ v: Any?, useRegex: Bool) -> Bool {
            guard let o = object(v, "ByteLevel") else { return false }
            return (o["use_regex"] as? Bool ?? true) == useRegex && o["add_prefix_space"] as? Bool == false
        }
        if byteLevel(value, useRegex: true) { return .gpt2 }
        if let seq = object(value, "Sequence"), let parts = seq["pretokenizers"] as? [Any], parts.count == 2 {
            if let digits = object(parts[0], "Digits"), digits["individual_digits"] as? Bool == true,
               byteLevel(parts[1], useRegex: true) {
                return .gpt2Digits
            }
            if let split = object(parts[0], "Split"), split["behavior"] as? String == "Isolated",
               split["invert"] as? Bool ?? false == false,
               let pattern = (split["pattern"] as? [String: Any])?["Regex"] as? String,
               byteLevel(parts[1], useRegex: false) {
                if pattern == PreTokenizer.llama3Pattern { return .llama3 }
                if pattern == PreTokenizer.qwen2Pattern { return .qwen2 }
            }
        }
        throw ModelFileError(file, "unsupported pre_tokenizer \(describe(value)) (supported: ByteLevel with the GPT-2 regex, "
                             + "Digits + ByteLevel, Split with the Llama-3 or Qwen2 regex + ByteLevel)")
    }

    private static func checkDecoder(_ value: Any?, file: String) throws {
        guard let o = value as? [String: Any], o["type"] as? String == "ByteLevel" else {
            throw ModelFileError(file, "unsupported decoder \(describe(value)) (only ByteLevel)")
        }
    }

    /// Special-token ids the post-processor puts before and after the text.
    private static func template(_ value: Any?, file: String) throws -> (prefix: [Int], suffix: [Int]) {
        guard let value, !(value is NSNull) else { return ([], []) }
        let o = value as? [String: Any] ?? [:]
        switch o["type"] as? String {
        case "ByteLevel":
            return ([], [])   // only adjusts offsets
        case "Sequence":
            // Each processor wraps the output of the previous one.
            var prefix: [Int] = [], suffix: [Int] = []
            for p in o["processors"] as? [Any] ?? [] {
                let (pre, post) = try template(p, file: file)
                prefix = pre + prefix
                suffix += post
            }
            return (prefix, suffix)
        case "TemplateProcessing":
            guard let single = o["single"] as? [[String: Any]] else { break }
            let specials = o["special_tokens"] as? [String: Any] ?? [:]
            var prefix: [Int] = [], suffix: [Int] = []
            var seenSequence = false
            for piece in single {
                if piece["Sequence"] != nil {
                    seenSequence = true
                } else if let name = (piece["SpecialToken"] as? [String: Any])?["id"] as? String {
                    guard let ids = (specials[name] as? [String: Any])?["ids"] as? [Int] else {
                        throw ModelFileError(file, "post_processor template names special token '\(name)' without ids")
                    }
                    if seenSequence { suffix += ids } else { prefix += ids }
                } else {
                    throw ModelFileError(file, "unsupported post_processor template piece \(describe(piece))")
                }
            }
            return (prefix, suffix)
        default:
            break
        }
        throw ModelFileError(file, "unsupported post_processor \(describe(value)) (supported: TemplateProcessing, ByteLevel, Sequence of those)")
    }
}

struct AddedToken {
    let content: [UInt8]
    let id: Int
    let special: Bool
    /// Swallow the whitespace before / after the token.
    let lstrip: Bool
    let rstrip: Bool
    let normalized: Bool
}

/// Finds added tokens in text, leftmost-longest (the aho-corasick match kind `tokenizers` uses). Every added token
/// starts with a UTF-8 lead byte and the text is valid UTF-8, so byte matches fall on character boundaries.
struct AddedTokenMatcher {
    /// Candidates by first byte, longest first.
    private var byFirstByte: [[AddedToken]] = Array(repeating: [], count: 256)
    let isEmpty: Bool

    init(_ tokens: [AddedToken]) {
        for t in tokens where !t.content.isEmpty { byFirstByte[Int(t.content[0])].append(t) }
        for b in 0..<256 { byFirstByte[b].sort { $0.content.count > $1.content.count } }
        isEmpty = tokens.isEmpty
    }

    /// Calls `text` for each stretch between added tokens and `token` for each added token, in order.
    func split(_ bytes: ArraySlice<UInt8>, text: (Range<Int>) -> Void, token: (Int) -> Void) {
        if isEmpty {
            if !bytes.isEmpty { text(bytes.indices) }
            return
        }
        var start = bytes.startIndex
        var p = bytes.startIndex
        let end = bytes.endIndex
        while p < end {
            let candidates = byFirstByte[Int(bytes[p])]
            guard !candidates.isEmpty,
                  let t = candidates.first(where: { $0.content.count <= end - p && bytes[p..<(p + $0.content.count)].elementsEqual($0.content) })
            else {
                p += 1
                continue
            }
            var matchStart = p, matchEnd = p + t.content.count
            if t.lstrip {
                while matchStart > start, let (c, len) = Self.scalar(endingAt: matchStart, in: bytes), c.properties.isWhitespace {
                    matchStart -= len
                }
            }
            if t.rstrip {
                while matchEnd < end, let (c, len) = Self.scalar(startingAt: matchEnd, in: bytes), c.properties.isWhitespace {
                    matchEnd += len
                }
            }
            if matchStart > start { text(start..<matchStart) }
            token(t.id)
            start = matchEnd
            p = matchEnd
        }
        if start < end { text(start..<end) }
    }

    private static func scalar(startingAt i: Int, in bytes: ArraySlice<UInt8>) -> (Unicode.Scalar, Int)? {
        var it = bytes[i...].makeIterator()
        var decoder = UTF8()
        guard case .scalarValue(let c) = decoder.decode(&it) else { return nil }
        return (c, UTF8.width(c))
    }

    private static func scalar(endingAt i: Int, in bytes: ArraySlice<UInt8>) -> (Unicode.Scalar, Int)? {
        var s = i - 1
        while s > bytes.startIndex && bytes[s] & 0xC0 == 0x80 { s -= 1 }
        return scalar(startingAt: s, in: bytes)
    }
}
