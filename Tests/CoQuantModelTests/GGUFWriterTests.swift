import Foundation
import XCTest
@testable import CoQuantModel

/// `GGUFWriter` read back with `GGUFFile`, and `Tokenizer.ggufMetadata` round trips through both.
final class GGUFWriterTests: XCTestCase {
    /// A fresh directory per test, removed afterwards.
    var dir = ""

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("coquant-gguf-writer-\(getpid())-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: dir)
    }

    func listing() throws -> [String] { try FileManager.default.contentsOfDirectory(atPath: dir).sorted() }

    /// Each metadata key with its on-disk value type (and element type for arrays), in file order, parsed straight
    /// from the header: `GGUFFile` folds the GGUF types into six cases, and llama.cpp does not.
    static func rawTypes(_ path: String) throws -> [(key: String, types: [UInt32])] {
        let f = try MappedFile(path: path)
        var pos = 24   // magic, version, tensor count
        func u32() -> UInt32 { defer { pos += 4 }; return f.load(UInt32.self, at: pos) }
        func u64() -> Int { defer { pos += 8 }; return Int(f.load(UInt64.self, at: pos)) }
        let kvCount = f.load(UInt64.self, at: 16)
        func skip(_ type: UInt32) {
            switch type {
            case 0, 1, 7: pos += 1
            case 2, 3: pos += 2
            case 4, 5, 6: pos += 4
            case 10, 11, 12: pos += 8
            case 8: pos += u64()
            case 9:
                let element = u32()
                for _ in 0..<u64() { skip(element) }
            default: XCTFail("unknown type \(type)")
            }
        }
        var out: [(key: String, types: [UInt32])] = []
        for _ in 0..<kvCount {
            let n = u64()
            let key = String(decoding: UnsafeRawBufferPointer(start: f.base + pos, count: n), as: UTF8.self)
            pos += n
            let type = u32()
            out.append((key, type == 9 ? [9, f.load(UInt32.self, at: pos)] : [type]))
            skip(type)
        }
        return out
    }

    /// What `GGUFFile` reads for a written value, and its GGUF type ids.
    static func expected(_ v: GGUFWriter.Value) -> (GGUFValue, [UInt32]) {
        switch v {
        case .u32(let x): return (.uint(UInt64(x)), [4])
        case .i32(let x): return (.int(Int64(x)), [5])
        case .u64(let x): return (.uint(x), [10])
        case .f32(let x): return (.float(Double(x)), [6])
        case .bool(let x): return (.bool(x), [7])
        case .string(let x): return (.string(x), [8])
        case .strings(let xs): return (.array(xs.map { .string($0) }), [9, 8])
        case .i32s(let xs): return (.array(xs.map { .int(Int64($0)) }), [9, 5])
        case .f32s(let xs): return (.array(xs.map { .float(Double($0)) }), [9, 6])
        }
    }

    static func padded(_ n: Int, _ alignment: Int) -> Int { (n + alignment - 1) / alignment * alignment }

    /// Deterministic bytes, different per seed.
    static func bytes(_ count: Int, seed: UInt8) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31) &+ seed } }

    final class CallLog: @unchecked Sendable { var names: [String] = [] }

    // MARK: Metadata and tensors

    func testMetadataAndTensorsRoundTrip() throws {
        let values: [(String, GGUFWriter.Value)] = [
            ("general.architecture", .string("llama")),
            ("test.u32", .u32(4_000_000_000)),
            ("test.i32", .i32(-7)),
            ("test.u64", .u64(1 << 40)),
            ("test.f32", .f32(0.1)),
            ("test.true", .bool(true)),
            ("test.false", .bool(false)),
            ("test.string", .string("héllo\nwörld ✓")),
            ("test.empty_string", .string("")),
            ("test.strings", .strings(["a", "", "Ġthe", "<|im_start|>", "東京"])),
            ("test.i32s", .i32s([1, -2, 3, Int32.min, Int32.max])),
            ("test.f32s", .f32s([0.5, -1.25, .infinity, .leastNonzeroMagnitude])),
            ("test.empty_i32s", .i32s([])),
        ]
        var w = GGUFWriter()
        w.set(values)
        w.set("test.i32", .i32(-8))   // a second set keeps the key's place
        XCTAssertEqual(w["test.i32"], .i32(-8))

        let f32Values: [Float] = [1, -2, 3.5, 0, .pi, -0.125]
        let f32Bytes = f32Values.withUnsafeBytes { Array($0) }
        // (name, type, ne, bytes): not square, sizes that are not multiples of 32, 1 to 3 dims.
        let specs: [(String, GGMLType, [Int], [UInt8])] = [
            ("blk.0.attn_q.weight", .f32, [3, 2], f32Bytes),
            ("blk.0.attn_norm.weight", .f16, [5], Self.bytes(10, seed: 1)),
            ("token_embd.weight", .q8_0, [64, 3], Self.bytes(6 * 34, seed: 2)),
            ("blk.0.ffn_down.weight", .q4_K, [256, 1], Self.bytes(144, seed: 3)),
            ("odd.i8", .i8, [7, 1, 2], Self.bytes(14, seed: 4)),
        ]
        let log = CallLog()
        for (name, type, dims, data) in specs {
            w.add(tensor: name, type: type, dims: dims) { log.names.append(name); return data }
        }
        XCTAssertEqual(log.names, [], "tensor data is produced during write, not before")

        let path = dir + "/out.gguf"
        try w.write(to: path)
        XCTAssertEqual(log.names, specs.map(\.0), "each tensor's data asked for once, in order")
        XCTAssertEqual(try listing(), ["out.gguf"], "no temporary file left behind")

        let file = try GGUFFile(path: path)
        XCTAssertEqual(file.version, 3)
        var want = values
        want[2].1 = .i32(-8)
        want.append(("general.alignment", .u32(32)))
        XCTAssertEqual(file.metadata.count, want.count)
        let raw = try Self.rawTypes(path)
        XCTAssertEqual(raw.map(\.key), want.map(\.0), "keys in insertion order")
        for ((key, value), (rawKey, types)) in zip(want, raw) {
            let (readValue, readTypes) = Self.expected(value)
            XCTAssertEqual(file.metadata[key], readValue, key)
            XCTAssertEqual(types, readTypes, "on-disk type of \(rawKey)")
        }

        XCTAssertEqual(file.tensors.map(\.name), specs.map(\.0))
        var expectedOffset = file.tensors[0].offset
        for (t, (name, type, dims, data)) in zip(file.tensors, specs) {
            XCTAssertEqual(t.type, type, name)
            XCTAssertEqual(t.dims, dims, name)
            XCTAssertEqual(t.byteCount, data.count, name)
            XCTAssertEqual(t.offset % 32, 0, "\(name) offset \(t.offset) aligned")
            XCTAssertEqual(t.offset, expectedOffset, "\(name) packed right after the previous tensor's padding")
            XCTAssertEqual(Array(try file.file.bytes(t.offset, t.byteCount, what: name)), data, name)
            expectedOffset += Self.padded(data.count, 32)
        }
        XCTAssertEqual(file.file.count, expectedOffset, "the last tensor is padded too")
        XCTAssertEqual(try file.dequantize(file.tensors[0]), f32Values)
    }

    func testCallerAlignment() throws {
        var w = GGUFWriter()
        w.set("general.alignment", .u32(64))
        w.set("general.architecture", .string("llama"))
        w.add(tensor: "a", type: .f16, dims: [3]) { Self.bytes(6, seed: 0) }
        w.add(tensor: "b", type: .f32, dims: [2, 2]) { Self.bytes(16, seed: 1) }
        let path = dir + "/aligned.gguf"
        try w.write(to: path)
        let file = try GGUFFile(path: path)
        XCTAssertEqual(try Self.rawTypes(path).map(\.key), ["general.alignment", "general.architecture"], "no second alignment key")
        XCTAssertEqual(file.metadata["general.alignment"], .uint(64))
        XCTAssertEqual(file.tensors.map { $0.offset % 64 }, [0, 0])
        XCTAssertEqual(file.tensors[1].offset - file.tensors[0].offset, 64)
        XCTAssertEqual(Array(try file.file.bytes(file.tensors[1].offset, 16, what: "b")), Self.bytes(16, seed: 1))

        for bad: GGUFWriter.Value in [.u64(64), .u32(24), .u32(0)] {
            w.set("general.alignment", bad)
            let badPath = dir + "/bad-alignment.gguf"
            assertFails(badPath, writer: w, mentioning: ["general.alignment"])
        }
    }

    /// Metadata only: no data section, and `GGUFFile` still opens it.
    func testNoTensors() throws {
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        let path = dir + "/empty.gguf"
        try w.write(to: path)
        let file = try GGUFFile(path: path)
        XCTAssertEqual(file.tensors.count, 0)
        XCTAssertEqual(file.metadata["general.architecture"], .string("llama"))
    }

    // MARK: Failures leave nothing behind

    struct ClosureError: Error, Equatable {}

    /// `writer.write(to: path)` throws (a ModelFileError about `path` mentioning `words`, or `ClosureError`), and
    /// the directory holds afterwards exactly what it held before.
    func assertFails(_ path: String, writer: GGUFWriter, mentioning words: [String]?, line: UInt = #line) {
        let before = (try? listing()) ?? []
        let old = FileManager.default.contents(atPath: path)
        do {
            try writer.write(to: path)
            XCTFail("no error", line: line)
        } catch let e as ModelFileError {
            XCTAssertEqual(e.file, path, line: line)
            if let words {
                for w in words { XCTAssertTrue(e.problem.contains(w), "'\(e.problem)' does not mention '\(w)'", line: line) }
            } else {
                XCTFail("expected the closure's error, got \(e)", line: line)
            }
        } catch {
            XCTAssertNil(words, "expected a ModelFileError, got \(error)", line: line)
            XCTAssertEqual(error as? ClosureError, ClosureError(), line: line)
        }
        XCTAssertEqual((try? listing()) ?? [], before, "no temporary file left behind", line: line)
        XCTAssertEqual(FileManager.default.contents(atPath: path), old, "\(path) untouched", line: line)
    }

    func testFailuresLeaveNothingBehind() throws {
        let path = dir + "/out.gguf"
        func writer(_ second: @escaping () throws -> [UInt8], type: GGMLType = .q8_0, dims: [Int] = [64, 3],
                    name: String = "blk.1.ffn_up.weight") -> GGUFWriter {
            var w = GGUFWriter()
            w.set("general.architecture", .string("llama"))
            w.add(tensor: "first", type: .f32, dims: [4, 2]) { Self.bytes(32, seed: 0) }
            w.add(tensor: name, type: type, dims: dims, bytes: second)
            return w
        }
        let good = Self.bytes(6 * 34, seed: 5)

        // The second tensor's data fails after the first one is already in the temporary file.
        assertFails(path, writer: writer { throw ClosureError() }, mentioning: nil)
        assertFails(path, writer: writer { Array(good.dropLast()) }, mentioning: ["'blk.1.ffn_up.weight'", "203", "expected 204"])
        assertFails(path, writer: writer { good + [0] }, mentioning: ["'blk.1.ffn_up.weight'", "205", "expected 204"])
        // Caught before any file is made.
        assertFails(path, writer: writer({ good }, dims: [33, 2]), mentioning: ["'blk.1.ffn_up.weight'", "block size 32"])
        assertFails(path, writer: writer({ good }, dims: [64, 0, 3]), mentioning: ["'blk.1.ffn_up.weight'", "positive"])
        assertFails(path, writer: writer({ good }, dims: [64, 1, 1, 1, 3]), mentioning: ["'blk.1.ffn_up.weight'", "5 dimensions"])
        assertFails(path, writer: writer({ good }, name: "first"), mentioning: ["duplicate tensor name 'first'"])
        assertFails(path, writer: writer({ good }, name: String(repeating: "x", count: 64)), mentioning: ["name"])
        XCTAssertEqual(try listing(), [])

        // An existing file stays as it was when writing over it fails, and is replaced when writing succeeds.
        try Data("old".utf8).write(to: URL(fileURLWithPath: path))
        assertFails(path, writer: writer { throw ClosureError() }, mentioning: nil)
        try writer { good }.write(to: path)
        XCTAssertEqual(try GGUFFile(path: path).tensors.map(\.name), ["first", "blk.1.ffn_up.weight"])
        XCTAssertEqual(try listing(), ["out.gguf"])

        let missingDir = dir + "/no/such/dir/out.gguf"
        assertFails(missingDir, writer: writer { good }, mentioning: ["cannot create"])
    }

    // MARK: Tokenizer metadata

    static let texts = [
        "Hello world",
        "x = 12345 + 67.89\n\n  def f():\n\treturn 0  \n",
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>",
        "naïve café 東京 🙂 <tool_call>{\"a\": 1}</tool_call>",
        " \n\n\n 1st 2nd 1000000",
    ]

    /// Writes `tok`'s metadata (with `chatTemplate`) into a GGUF without tensors and reads it back.
    func writeTokenizer(_ tok: Tokenizer, chatTemplate: String?, architecture: String) throws -> GGUFFile {
        var w = GGUFWriter()
        w.set("general.architecture", .string(architecture))
        w.set(tok.ggufMetadata(chatTemplate: chatTemplate))
        let path = dir + "/tokenizer.gguf"
        try w.write(to: path)
        return try GGUFFile(path: path)
    }

    func assertSameEncoding(_ back: Tokenizer, _ tok: Tokenizer, _ what: String, line: UInt = #line) {
        XCTAssertEqual(back.vocabSize, tok.vocabSize, what, line: line)
        XCTAssertEqual(back.bosTokenId, tok.bosTokenId, what, line: line)
        XCTAssertEqual(back.eosTokenIds, tok.eosTokenIds, what, line: line)
        XCTAssertEqual(back.addsBOS, tok.addsBOS, what, line: line)
        for text in Self.texts {
            XCTAssertEqual(back.encode(text), tok.encode(text), "\(what): \(text.debugDescription)", line: line)
            XCTAssertEqual(back.encode(text, addSpecialTokens: false), tok.encode(text, addSpecialTokens: false),
                           "\(what) without special tokens: \(text.debugDescription)", line: line)
        }
    }

    /// GGUF → Tokenizer → ggufMetadata → GGUF: every tokenizer key written that the source has is equal, with the
    /// same on-disk type, and the copy's tokenizer encodes as the source's does.
    func checkGGUFRoundTrip(_ modelPath: String, _ name: String, notCarried: Set<String>) throws {
        let source = try GGUFFile(path: try requireModel(modelPath, name))
        let tok = try Tokenizer(gguf: source)
        let template = try XCTUnwrap(source.metadata["tokenizer.chat_template"]?.string)
        let copy = try writeTokenizer(tok, chatTemplate: template, architecture: try XCTUnwrap(source.architecture))

        let sourceTypes = Dictionary(uniqueKeysWithValues: try Self.rawTypes(source.path).map { ($0.key, $0.types) })
        let copyTypes = Dictionary(uniqueKeysWithValues: try Self.rawTypes(copy.path).map { ($0.key, $0.types) })
        let required = ["model", "pre", "tokens", "token_type", "merges", "bos_token_id", "eos_token_id", "add_bos_token"]
            .map { "tokenizer.ggml." + $0 } + ["tokenizer.chat_template"]
        for key in required { XCTAssertNotNil(copy.metadata[key], "\(key) written") }
        for (key, value) in source.metadata where key.hasPrefix("tokenizer.") && !notCarried.contains(key) {
            XCTAssertTrue(copy.metadata[key] == value, "\(key) equal to the source's")
            XCTAssertEqual(copyTypes[key], sourceTypes[key], "\(key) on-disk type")
        }
        for key in notCarried { XCTAssertNil(copy.metadata[key], "\(key) is not expected to be written") }

        assertSameEncoding(try Tokenizer(gguf: copy), tok, name)
        XCTAssertEqual(tok.encode("<|im_start|>", addSpecialTokens: false).count, 1, "chat marker is one token")
    }

    func testSmolLM2TokenizerRoundTrip() throws {
        // The source's add_space_prefix is not written: llama.cpp's default for BPE vocabularies is the same (false).
        try checkGGUFRoundTrip(smolLM2Path, "smollm2", notCarried: ["tokenizer.ggml.add_space_prefix"])
    }

    func testQwen2TokenizerRoundTrip() throws {
        try checkGGUFRoundTrip(qwen2Path, "qwen2.5-coder-0.5b", notCarried: [])
    }

    /// tokenizer.json → GGUF metadata: llama.cpp's names and token types, read back by `Tokenizer(gguf:)` to the
    /// same encoding.
    func testLlama3JSONToGGUF() throws {
        let tok = try TokenizerTests.llama3.get()
        let copy = try writeTokenizer(tok, chatTemplate: nil, architecture: "llama")
        XCTAssertEqual(copy.metadata["tokenizer.ggml.pre"], .string("llama-bpe"))
        XCTAssertEqual(copy.metadata["tokenizer.ggml.bos_token_id"], .uint(128_000))
        XCTAssertEqual(copy.metadata["tokenizer.ggml.eos_token_id"], .uint(128_001))
        XCTAssertEqual(copy.metadata["tokenizer.ggml.add_bos_token"], .bool(true))
        XCTAssertNil(copy.metadata["tokenizer.chat_template"])
        let types = try XCTUnwrap(copy.metadata["tokenizer.ggml.token_type"]?.array).map { $0.int! }
        XCTAssertEqual(types.count, tok.vocabSize)   // 128,257: this fixture's vocabulary ends with <|image|>
        XCTAssertEqual(Set(types[..<128_000]), [1])
        XCTAssertEqual(Set(types[128_000...]), [3], "Llama-3's added tokens are all special: control")
        assertSameEncoding(try Tokenizer(gguf: copy), tok, "llama3")
    }

    /// The SmolLM2 tokenizer.json fixture written as GGUF metadata holds the vocabulary llama.cpp's converter put
    /// into the SmolLM2 GGUF (tokens, types, merges, bos/eos), under llama.cpp's name for its GPT-2 regex.
    func testSmolLM2JSONToGGUF() throws {
        let tok = try TokenizerTests.smolJSON.get()
        let copy = try writeTokenizer(tok, chatTemplate: nil, architecture: "llama")
        XCTAssertEqual(copy.metadata["tokenizer.ggml.pre"], .string("gpt-2"))
        assertSameEncoding(try Tokenizer(gguf: copy), tok, "smollm2 json")

        let source = try GGUFFile(path: try requireModel(smolLM2Path, "smollm2"))
        for key in ["tokens", "token_type", "merges", "bos_token_id", "eos_token_id", "add_bos_token"].map({ "tokenizer.ggml." + $0 }) {
            XCTAssertTrue(copy.metadata[key] == source.metadata[key], "\(key) as in the converted GGUF")
        }
    }
}
