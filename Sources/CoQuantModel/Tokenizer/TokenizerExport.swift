import Foundation
#if canImport(Glibc)
import Glibc
#endif

extension Tokenizer {
    /// Writes an HF `tokenizer.json` (and `tokenizer_config.json`) that `Tokenizer(tokenizerJSON:tokenizerConfig:)`
    /// reads back to a tokenizer with identical encode/decode behaviour. Atomic: temp file then rename.
    ///
    /// The files use the standard `tokenizers` schema (byte-level BPE model, `added_tokens`, NFC or no normalizer,
    /// the pre-tokenizer spelled exactly as the importer recognises it, a `TemplateProcessing` post-processor where
    /// the tokenizer adds special tokens, ByteLevel decoder), so `tokenizers.Tokenizer.from_file` and transformers'
    /// `PreTrainedTokenizerFast` load them too. (`tokenizers` further wants the unknown token in the vocabulary and
    /// added tokens either in it or numbered right after it, as in every file it wrote and every GGUF vocabulary; it
    /// renumbers added tokens that are not.)
    ///
    /// Not carried over: declared end-of-generation ids beyond the first (a GGUF's `eot_token_id` / `eom_token_id`)
    /// that are not also recognised end-of-turn markers, since `tokenizer_config.json` has a single `eos_token`.
    ///
    /// - Parameter modelMaxLength: `model_max_length` in the config; nil writes transformers' "no limit" value.
    public func write(tokenizerJSON path: String, tokenizerConfig configPath: String, modelMaxLength: Int? = nil) throws {
        let json = try tokenizerJSONValue(file: path)
        let config = try tokenizerConfigValue(file: configPath, modelMaxLength: modelMaxLength)
        try Self.writeAtomically(json.rendered(), to: path)
        try Self.writeAtomically(config.rendered(), to: configPath)
    }

    // MARK: tokenizer.json

    private func tokenizerJSONValue(file: String) throws -> JSONValue {
        let spec = self.spec

        // Vocabulary in id order (ties, a second spelling of one id, by bytes) so that the file is deterministic.
        let vocabEntries = spec.vocab.sorted {
            $0.value != $1.value ? $0.value < $1.value : $0.key.lexicographicallyPrecedes($1.key)
        }
        let vocab = JSONValue.object(vocabEntries.map { (JSONKey($0.key), .int($0.value)) })

        // "a b" strings, which every version of `tokenizers` reads; pairs only if a token contains a space (the
        // string form could not be split back).
        let needsPairs = spec.merges.contains { $0.0.contains(0x20) || $0.1.contains(0x20) }
        let merges = JSONValue.array(spec.merges.map { a, b in
            needsPairs ? .array([.string(a), .string(b)]) : .string(a + [0x20] + b)
        })

        let unk: JSONValue
        if let unkId = spec.unkId {
            unk = .string(try content(of: unkId, file: file, role: "unk_token"))
        } else {
            unk = .null
        }

        let model = JSONValue.object([
            ("type", .string("BPE")),
            ("dropout", .null),
            ("unk_token", unk),
            ("continuing_subword_prefix", .null),
            ("end_of_word_suffix", .null),
            ("fuse_unk", .bool(false)),
            ("byte_fallback", .bool(false)),
            ("ignore_merges", .bool(spec.ignoreMerges)),
            ("vocab", vocab),
            ("merges", merges),
        ])

        // In the order the tokenizer was built with, so that a re-import hands the matchers the same lists.
        let added = JSONValue.array(spec.added.map { t in
            .object([
                ("id", .int(t.id)),
                ("content", .string(t.content)),
                ("single_word", .bool(false)),
                ("lstrip", .bool(t.lstrip)),
                ("rstrip", .bool(t.rstrip)),
                ("normalized", .bool(t.normalized)),
                ("special", .bool(t.special)),
            ])
        })

        return .object([
            ("version", .string("1.0")),
            ("truncation", .null),
            ("padding", .null),
            ("added_tokens", added),
            ("normalizer", spec.nfc ? .object([("type", .string("NFC"))]) : .null),
            ("pre_tokenizer", Self.preTokenizerJSON(spec.preTokenizer)),
            ("post_processor", try postProcessorJSON(file: file)),
            ("decoder", Self.byteLevel(addPrefixSpace: true, trimOffsets: true, useRegex: true)),
            ("model", model),
        ])
    }

    private static func byteLevel(addPrefixSpace: Bool, trimOffsets: Bool, useRegex: Bool) -> JSONValue {
        .object([
            ("type", .string("ByteLevel")),
            ("add_prefix_space", .bool(addPrefixSpace)),
            ("trim_offsets", .bool(trimOffsets)),
            ("use_regex", .bool(useRegex)),
        ])
    }

    /// Each kind exactly as `Tokenizer.preTokenizer(_:file:)` recognises it.
    private static func preTokenizerJSON(_ kind: PreTokenizer) -> JSONValue {
        switch kind {
        case .gpt2:
            return byteLevel(addPrefixSpace: false, trimOffsets: true, useRegex: true)
        case .gpt2Digits:
            return .object([
                ("type", .string("Sequence")),
                ("pretokenizers", .array([
                    .object([("type", .string("Digits")), ("individual_digits", .bool(true))]),
                    byteLevel(addPrefixSpace: false, trimOffsets: true, useRegex: true),
                ])),
            ])
        case .qwen2, .llama3:
            let pattern = kind == .qwen2 ? PreTokenizer.qwen2Pattern : PreTokenizer.llama3Pattern
            return .object([
                ("type", .string("Sequence")),
                ("pretokenizers", .array([
                    .object([
                        ("type", .string("Split")),
                        ("pattern", .object([("Regex", .string(pattern))])),
                        ("behavior", .string("Isolated")),
                        ("invert", .bool(false)),
                    ]),
                    byteLevel(addPrefixSpace: false, trimOffsets: true, useRegex: false),
                ])),
            ])
        }
    }

    /// `TemplateProcessing` around the text when the tokenizer adds special tokens (BOS, or whatever prefix and
    /// suffix it was built with), otherwise the offsets-only ByteLevel processor that GPT-2 style files carry.
    private func postProcessorJSON(file: String) throws -> JSONValue {
        let spec = self.spec
        if spec.prefixIds.isEmpty && spec.suffixIds.isEmpty {
            return Self.byteLevel(addPrefixSpace: true, trimOffsets: false, useRegex: true)
        }
        // Each id gets a name (its content, made unique if two ids share one) and an entry in special_tokens.
        var names: [Int: String] = [:]
        var specialTokens: [(JSONKey, JSONValue)] = []
        var used: Set<[UInt8]> = []
        for id in spec.prefixIds + spec.suffixIds where names[id] == nil {
            let content = token(id).map { Array($0.utf8) } ?? Array("<\(id)>".utf8)
            var name = content
            var n = 1
            while used.contains(name) {
                n += 1
                name = content + Array("#\(n)".utf8)
            }
            used.insert(name)
            let nameString = String(decoding: name, as: UTF8.self)
            names[id] = nameString
            specialTokens.append((JSONKey(name), .object([
                ("id", .string(name)),
                ("ids", .array([.int(id)])),
                ("tokens", .array([.string(content)])),
            ])))
        }
        func special(_ id: Int, _ typeId: Int) -> JSONValue {
            .object([("SpecialToken", .object([("id", .string(names[id]!)), ("type_id", .int(typeId))]))])
        }
        func sequence(_ name: String, _ typeId: Int) -> JSONValue {
            .object([("Sequence", .object([("id", .string(name)), ("type_id", .int(typeId))]))])
        }
        let single = spec.prefixIds.map { special($0, 0) } + [sequence("A", 0)] + spec.suffixIds.map { special($0, 0) }
        let pair = single + spec.prefixIds.map { special($0, 1) } + [sequence("B", 1)] + spec.suffixIds.map { special($0, 1) }
        return .object([
            ("type", .string("TemplateProcessing")),
            ("single", .array(single)),
            ("pair", .array(pair)),
            ("special_tokens", .object(specialTokens)),
        ])
    }

    /// A spelling of `id` that the importer's token lookup (added tokens first, then the vocabulary) maps back to it.
    private func content(of id: Int, file: String, role: String) throws -> [UInt8] {
        let spec = self.spec
        func lookup(_ bytes: [UInt8]) -> Int? { spec.added.first(where: { $0.content == bytes })?.id ?? spec.vocab[bytes] }
        var candidates = spec.added.filter { $0.id == id }.map(\.content)
        candidates += spec.vocab.filter { $0.value == id }.map(\.key).sorted { $0.lexicographicallyPrecedes($1) }
        guard let c = candidates.first(where: { lookup($0) == id }) else {
            throw ModelFileError(file, "\(role) id \(id) has no token text that names it unambiguously")
        }
        return c
    }

    // MARK: tokenizer_config.json

    private func tokenizerConfigValue(file: String, modelMaxLength: Int?) throws -> JSONValue {
        let spec = self.spec
        var entries: [(String, JSONValue)] = []
        // add_bos_token / add_eos_token override the template on import, so they are written only where they say
        // the same as it: true for exactly [bos] / [eos], false for nothing; otherwise the template alone decides.
        if spec.prefixIds.isEmpty {
            entries.append(("add_bos_token", .bool(false)))
        } else if let bos = spec.bosTokenId, spec.prefixIds == [bos] {
            entries.append(("add_bos_token", .bool(true)))
        }
        let eos = spec.eosTokenIds.first
        if spec.suffixIds.isEmpty {
            entries.append(("add_eos_token", .bool(false)))
        } else if let eos, spec.suffixIds == [eos] {
            entries.append(("add_eos_token", .bool(true)))
        }
        if let bos = spec.bosTokenId {
            entries.append(("bos_token", .string(try content(of: bos, file: file, role: "bos_token"))))
        }
        if let t = spec.chatTemplate { entries.append(("chat_template", .string(t))) }
        // transformers would otherwise turn " ." into "." and so on when decoding.
        entries.append(("clean_up_tokenization_spaces", .bool(false)))
        if let eos {
            entries.append(("eos_token", .string(try content(of: eos, file: file, role: "eos_token"))))
        }
        // transformers' VERY_LARGE_INTEGER (int(1e30)), its value for "no limit".
        entries.append(("model_max_length", modelMaxLength.map { .int($0) } ?? .number("1000000000000000019884624838656")))
        entries.append(("tokenizer_class", .string("PreTrainedTokenizerFast")))
        if let unk = spec.unkId {
            entries.append(("unk_token", .string(try content(of: unk, file: file, role: "unk_token"))))
        }
        return .object(entries)
    }

    // MARK: Writing

    /// Writes `bytes` to a temporary file next to `path`, then renames it over `path`, so that a reader sees either
    /// the old file or the whole new one.
    static func writeAtomically(_ bytes: [UInt8], to path: String) throws {
        let url = URL(fileURLWithPath: path)
        let temp = url.deletingLastPathComponent()
            .appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        do {
            try Data(bytes).write(to: URL(fileURLWithPath: temp))
        } catch {
            unlink(temp)
            throw ModelFileError(path, "cannot write (\(error))")
        }
        guard rename(temp, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temp)
            throw ModelFileError(path, "cannot rename \(temp) to it (\(reason))")
        }
    }
}

/// An object key: raw UTF-8, so that vocabulary spellings never go through `String` comparison (which would treat
/// canonically equivalent spellings as one).
struct JSONKey {
    let bytes: [UInt8]
    init(_ bytes: [UInt8]) { self.bytes = bytes }
}

/// A JSON document built in order and rendered with two-space indentation, as `tokenizers` saves its files.
indirect enum JSONValue {
    case null
    case bool(Bool)
    case int(Int)
    /// A number literal written as given (for values beyond `Int`).
    case number(String)
    case string([UInt8])
    case array([JSONValue])
    case object([(JSONKey, JSONValue)])

    static func string(_ s: String) -> JSONValue { .string(Array(s.utf8)) }
    static func object(_ entries: [(String, JSONValue)]) -> JSONValue { .object(entries.map { (JSONKey(Array($0.0.utf8)), $0.1) }) }

    func rendered() -> [UInt8] {
        var out: [UInt8] = []
        render(into: &out, indent: 0)
        out.append(0x0A)
        return out
    }

    private static let hex = Array("0123456789abcdef".utf8)

    /// JSON string literal; the text is valid UTF-8 (it came from `String`s), so only `"`, `\` and control
    /// characters need escapes.
    static func appendString(_ bytes: [UInt8], to out: inout [UInt8]) {
        out.append(0x22)
        for b in bytes {
            switch b {
            case 0x22: out += [0x5C, 0x22]
            case 0x5C: out += [0x5C, 0x5C]
            case 0x0A: out += [0x5C, 0x6E]
            case 0x0D: out += [0x5C, 0x72]
            case 0x09: out += [0x5C, 0x74]
            case 0..<0x20: out += [0x5C, 0x75, 0x30, 0x30, hex[Int(b >> 4)], hex[Int(b & 0xF)]]
            default: out.append(b)
            }
        }
        out.append(0x22)
    }

    private func render(into out: inout [UInt8], indent: Int) {
        func newline(_ level: Int) {
            out.append(0x0A)
            out += repeatElement(0x20, count: 2 * level)
        }
        switch self {
        case .null: out += Array("null".utf8)
        case .bool(let b): out += Array((b ? "true" : "false").utf8)
        case .int(let i): out += Array(String(i).utf8)
        case .number(let s): out += Array(s.utf8)
        case .string(let s): Self.appendString(s, to: &out)
        case .array(let items):
            out.append(0x5B)
            for (i, item) in items.enumerated() {
                if i > 0 { out.append(0x2C) }
                newline(indent + 1)
                item.render(into: &out, indent: indent + 1)
            }
            if !items.isEmpty { newline(indent) }
            out.append(0x5D)
        case .object(let entries):
            out.append(0x7B)
            for (i, (key, value)) in entries.enumerated() {
                if i > 0 { out.append(0x2C) }
                newline(indent + 1)
                Self.appendString(key.bytes, to: &out)
                out += [0x3A, 0x20]
                value.render(into: &out, indent: indent + 1)
            }
            if !entries.isEmpty { newline(indent) }
            out.append(0x7D)
        }
    }
}
