@testable import CoQuantModel
import Foundation
import XCTest


// MARK: - A minimal GGUF writer for synthetic files

/// Little-endian byte builder; each bad-input test starts from a valid layout and breaks one field.
private struct GGUFBytes {
    var data = Data()

    mutating func u8(_ v: UInt8) { data.append(v) }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { data.append(contentsOf: $0) } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { data.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { data.append(contentsOf: $0) } }
    mutating func string(_ s: String) { u64(UInt64(s.utf8.count)); data.append(contentsOf: Array(s.utf8)) }
    mutating func pad(to alignment: Int) { while data.count % alignment != 0 { data.append(0) } }

    mutating func header(version: UInt32 = 3, tensors: Int, kvs: Int) {
        data.append(contentsOf: Array("GGUF".utf8))
        u32(version); u64(UInt64(tensors)); u64(UInt64(kvs))
    }

    mutating func kvString(_ key: String, _ value: String) { string(key); u32(8); string(value) }
    mutating func kvU32(_ key: String, _ value: UInt32) { string(key); u32(4); u32(value) }

    mutating func tensorInfo(_ name: String, dims: [Int], type: UInt32, offset: Int) {
        string(name); u32(UInt32(dims.count))
        for d in dims { u64(UInt64(d)) }
        u32(type); u64(UInt64(offset))
    }
}

private struct SyntheticTensor {
    let name: String, dims: [Int], type: UInt32, bytes: [UInt8]
}

/// A complete file: the given kv entries (already encoded) then the tensors, each aligned to 32 bytes.
private func gguf(kvCount: Int, kvs: (inout GGUFBytes) -> Void, tensors: [SyntheticTensor]) -> Data {
    var w = GGUFBytes()
    w.header(tensors: tensors.count, kvs: kvCount)
    kvs(&w)
    var offset = 0
    var offsets: [Int] = []
    for t in tensors {
        offsets.append(offset)
        offset = (offset + t.bytes.count + 31) / 32 * 32
    }
    for (t, o) in zip(tensors, offsets) { w.tensorInfo(t.name, dims: t.dims, type: t.type, offset: o) }
    w.pad(to: 32)
    for t in tensors {
        w.data.append(contentsOf: t.bytes)
        w.pad(to: 32)
    }
    return w.data
}

private func f16Bits(_ x: Float) -> [UInt8] {
    let b = Float16(x).bitPattern
    return [UInt8(b & 0xFF), UInt8(b >> 8)]
}

/// Two Q8_0 blocks (d = 0.5 and d = −0.25) and six F16 values, with exactly known fp32 results.
private let q8Tensor = SyntheticTensor(
    name: "blk.0.q8", dims: [32, 2], type: 8,
    bytes: f16Bits(0.5) + (0..<32).map { UInt8(bitPattern: Int8($0 - 16)) }
        + f16Bits(-0.25) + (0..<32).map { UInt8(bitPattern: Int8(truncatingIfNeeded: $0 * 8 - 128)) })
private let q8Expected: [Float] = (0..<32).map { Float($0 - 16) * 0.5 } + (0..<32).map { Float($0 * 8 - 128) * -0.25 }
private let f16Tensor = SyntheticTensor(
    name: "norm", dims: [3, 2], type: 1,
    bytes: [0x00, 0x3C, 0x00, 0xC0, 0x00, 0x38, 0xFF, 0x7B, 0x01, 0x00, 0x00, 0x80])  // 1, −2, 0.5, 65504, 2⁻²⁴, −0
private let f16Expected: [Float] = [1, -2, 0.5, 65504, 0x1p-24, -0.0]

private func validKVs(_ w: inout GGUFBytes) {
    w.kvString("general.architecture", "llama")
    w.kvU32("llama.block_count", 1)
    w.string("llama.rope.freq_base"); w.u32(6); w.u32(Float(10000.5).bitPattern)
    w.string("tokenizer.ggml.add_bos_token"); w.u32(7); w.u8(1)
    w.string("tokenizer.ggml.tokens"); w.u32(9); w.u32(8); w.u64(3)
    w.string("<s>"); w.string("é"); w.string("")
    w.string("tokenizer.ggml.token_type"); w.u32(9); w.u32(5); w.u64(2); w.u32(UInt32(bitPattern: -1)); w.u32(3)
    w.string("general.f64"); w.u32(12); w.u64(Double(0.1).bitPattern)
    w.string("general.i64"); w.u32(11); w.u64(UInt64(bitPattern: -5))
}
private let validKVCount = 8

// MARK: - Tests

final class GGUFTests: XCTestCase {
    private var tempDir: URL!

    override func setUpWithError() throws {
        tempDir = FileManager.default.temporaryDirectory.appendingPathComponent("gguf-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tempDir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: tempDir)
    }

    private func write(_ data: Data, _ name: String) throws -> String {
        let url = tempDir.appendingPathComponent(name)
        try data.write(to: url)
        return url.path
    }

    /// `GGUFFile(path:)` must fail with a ModelFileError naming the file and containing `problem`.
    private func assertRejects(_ data: Data, _ name: String, _ problem: String, line: UInt = #line) throws {
        let path = try write(data, name)
        XCTAssertThrowsError(try GGUFFile(path: path), line: line) { error in
            guard let e = error as? ModelFileError else { return XCTFail("not a ModelFileError: \(error)", line: line) }
            XCTAssertEqual(e.file, path, line: line)
            XCTAssertTrue(e.description.contains(path), e.description, line: line)
            XCTAssertTrue(e.problem.contains(problem), "'\(e.problem)' does not mention '\(problem)'", line: line)
        }
    }

    func testSyntheticFile() throws {
        let path = try write(gguf(kvCount: validKVCount, kvs: validKVs, tensors: [q8Tensor, f16Tensor]), "ok.gguf")
        let f = try GGUFFile(path: path)
        XCTAssertEqual(f.version, 3)
        XCTAssertEqual(f.architecture, "llama")
        XCTAssertEqual(f.metadata.count, validKVCount)
        XCTAssertEqual(f.metadata["llama.block_count"]?.int, 1)
        XCTAssertEqual(f.metadata["llama.rope.freq_base"]?.double, 10000.5)
        XCTAssertEqual(f.metadata["tokenizer.ggml.add_bos_token"]?.bool, true)
        XCTAssertEqual(f.metadata["tokenizer.ggml.tokens"]?.array?.compactMap(\.string), ["<s>", "é", ""])
        XCTAssertEqual(f.metadata["tokenizer.ggml.token_type"], .array([.int(-1), .int(3)]))
        XCTAssertEqual(f.metadata["general.f64"]?.double, 0.1)
        XCTAssertEqual(f.metadata["general.i64"]?.int, -5)
        XCTAssertNil(f.metadata["general.architecture"]?.int)

        XCTAssertEqual(f.tensors.map(\.name), ["blk.0.q8", "norm"])
        let q8 = try XCTUnwrap(f.tensor(named: "blk.0.q8"))
        XCTAssertEqual(q8.type, .q8_0)
        XCTAssertEqual(q8.type.name, "Q8_0")
        XCTAssertEqual(q8.dims, [32, 2])
        XCTAssertEqual(q8.shape, [2, 32])
        XCTAssertEqual(q8.elementCount, 64)
        XCTAssertEqual(q8.byteCount, 68)
        XCTAssertEqual(q8.offset % 32, 0)
        XCTAssertEqual(try f.dequantize(q8).map(\.bitPattern), q8Expected.map(\.bitPattern))

        let h = try XCTUnwrap(f.tensor(named: "norm"))
        XCTAssertEqual(h.offset, q8.offset + 96)
        XCTAssertEqual(h.shape, [2, 3])
        XCTAssertEqual(try f.dequantize(h).map(\.bitPattern), f16Expected.map(\.bitPattern))
        XCTAssertNil(f.tensor(named: "missing"))
    }

    /// Random blocks of every supported format against gguf-py (`Tests/Fixtures/gguf-blocks/gen_blocks.py`),
    /// including formats the two real models do not use (Q4_0, Q5_1, Q2_K, Q3_K, Q5_K, F16, BF16).
    func testBlockFormatsMatchGGUFPy() throws {
        struct Blocks: Decodable {
            struct Entry: Decodable { let type: String, type_id: UInt32, n_elements: Int, hex: String, expected_bits: [UInt32] }
            let blocks: [Entry]
        }
        let url = URL(fileURLWithPath: fixturesDir + "/gguf-blocks/blocks.json")
        let fixture = try JSONDecoder().decode(Blocks.self, from: Data(contentsOf: url))
        let tensors = fixture.blocks.map { b in
            let hex = Array(b.hex.utf8)
            let bytes = stride(from: 0, to: hex.count, by: 2).map { UInt8(String(decoding: hex[$0..<$0 + 2], as: UTF8.self), radix: 16)! }
            return SyntheticTensor(name: b.type, dims: [b.n_elements], type: b.type_id, bytes: bytes)
        }
        let f = try GGUFFile(path: try write(gguf(kvCount: 0, kvs: { _ in }, tensors: tensors), "blocks.gguf"))
        XCTAssertEqual(fixture.blocks.count, 12)
        for b in fixture.blocks {
            let info = try XCTUnwrap(f.tensor(named: b.type))
            XCTAssertEqual(info.type.name, b.type)
            let got = try f.dequantize(info).map(\.bitPattern)
            let bad = zip(got, b.expected_bits).enumerated().filter { $0.element.0 != $0.element.1 }
            XCTAssertTrue(bad.isEmpty, "\(b.type): \(bad.count) of \(got.count) values differ, first at \(bad.first.map { "\($0.offset): got \(Float(bitPattern: $0.element.0)) want \(Float(bitPattern: $0.element.1))" } ?? "")")
        }
    }

    /// A tensor large enough to be split across cores gives the same values as the block formula.
    func testLargeTensorParallelPath() throws {
        let blocks = 5000
        var bytes: [UInt8] = []
        var expected: [Float] = []
        for b in 0..<blocks {
            let d = Float(Float16(Float(b % 97 + 1) / 1024))
            bytes += f16Bits(d)
            for j in 0..<32 {
                let q = Int8(truncatingIfNeeded: b * 31 + j * 7)
                bytes.append(UInt8(bitPattern: q))
                expected.append(Float(q) * d)
            }
        }
        let t = SyntheticTensor(name: "big", dims: [320, blocks / 10], type: 8, bytes: bytes)
        let f = try GGUFFile(path: try write(gguf(kvCount: 0, kvs: { _ in }, tensors: [t]), "big.gguf"))
        let got = try f.dequantize(try XCTUnwrap(f.tensor(named: "big")))
        XCTAssertEqual(got.count, expected.count)
        XCTAssertTrue(got.map(\.bitPattern) == expected.map(\.bitPattern))
    }

    func testTruncatedHeader() throws {
        let full = gguf(kvCount: 1, kvs: { w in w.kvString("general.architecture", "llama") }, tensors: [q8Tensor])
        try assertRejects(full.prefix(10), "short.gguf", "too short for a GGUF header")
        // cut inside the length of the value string (header 24 + key 28 + type 4 + 4 of 8 length bytes)
        try assertRejects(full.prefix(60), "cut.gguf", "string length of metadata 'general.architecture': 8 bytes at offset 56 run past the end of the file (60 bytes)")
        // cut inside the tensor infos
        try assertRejects(full.prefix(90), "cut2.gguf", "of tensor 'blk.0.q8'")
    }

    func testWrongMagic() throws {
        var data = gguf(kvCount: 0, kvs: { _ in }, tensors: [f16Tensor])
        data.replaceSubrange(0..<4, with: Array("GGML".utf8))
        try assertRejects(data, "magic.gguf", "not a GGUF file (magic 'GGML'")
    }

    func testUnsupportedVersion() throws {
        var w = GGUFBytes()
        w.header(version: 1, tensors: 0, kvs: 0)
        try assertRejects(w.data, "v1.gguf", "unsupported GGUF version 1")
        var be = GGUFBytes()
        be.header(version: UInt32(3).byteSwapped, tensors: 0, kvs: 0)
        try assertRejects(be.data, "be.gguf", "big-endian GGUF")
    }

    func testStringLengthPastEOF() throws {
        let data = gguf(kvCount: 1, kvs: { w in
            w.string("general.name"); w.u32(8); w.u64(1 << 40); w.data.append(contentsOf: Array("abc".utf8))
        }, tensors: [])
        try assertRejects(data, "string.gguf", "metadata 'general.name': string length 1099511627776")
        let longKey = gguf(kvCount: 1, kvs: { w in w.u64(UInt64.max); w.u32(4) }, tensors: [])
        try assertRejects(longKey, "key.gguf", "key of metadata entry 0: string length 18446744073709551615")
    }

    func testUnknownValueType() throws {
        let data = gguf(kvCount: 1, kvs: { w in w.string("general.weird"); w.u32(13); w.u32(0) }, tensors: [])
        try assertRejects(data, "kvtype.gguf", "metadata 'general.weird': unknown value type 13")
        let array = gguf(kvCount: 1, kvs: { w in w.string("general.list"); w.u32(9); w.u32(42); w.u64(1) }, tensors: [])
        try assertRejects(array, "arraytype.gguf", "unknown array element type 42")
    }

    func testAbsurdCounts() throws {
        let array = gguf(kvCount: 1, kvs: { w in w.string("tokenizer.ggml.tokens"); w.u32(9); w.u32(8); w.u64(1 << 60) }, tensors: [])
        try assertRejects(array, "array.gguf", "array of 1152921504606846976 elements")
        var w = GGUFBytes()
        w.header(tensors: 1 << 50, kvs: 0)
        try assertRejects(w.data, "tensors.gguf", "tensor count 1125899906842624 cannot fit")
        var k = GGUFBytes()
        k.header(tensors: 0, kvs: Int.max)
        try assertRejects(k.data, "kvs.gguf", "metadata kv count \(Int.max) cannot fit")
    }

    func testUnknownTensorType() throws {
        let t = SyntheticTensor(name: "blk.0.attn_q.weight", dims: [32], type: 99, bytes: [UInt8](repeating: 0, count: 64))
        try assertRejects(gguf(kvCount: 0, kvs: { _ in }, tensors: [t]), "ttype.gguf",
                          "tensor 'blk.0.attn_q.weight' has unknown ggml type id 99")
    }

    func testKnownButUnsupportedTypeOpensButDoesNotDequantize() throws {
        let t = SyntheticTensor(name: "iq", dims: [256], type: 16, bytes: [UInt8](repeating: 0, count: 66))  // IQ2_XXS
        let path = try write(gguf(kvCount: 0, kvs: { _ in }, tensors: [t, f16Tensor]), "iq.gguf")
        let f = try GGUFFile(path: path)
        XCTAssertEqual(try f.dequantize(try XCTUnwrap(f.tensor(named: "norm"))).count, 6)
        XCTAssertThrowsError(try f.dequantize(try XCTUnwrap(f.tensor(named: "iq")))) { error in
            let e = error as? ModelFileError
            XCTAssertEqual(e?.file, path)
            XCTAssertTrue(e?.problem.contains("tensor 'iq': dequantization of IQ2_XXS (ggml type id 16) is not supported") == true, "\(error)")
        }
    }

    func testTensorDataPastEOF() throws {
        var data = gguf(kvCount: 0, kvs: { _ in }, tensors: [q8Tensor])
        data.removeLast(32)   // the padding and the last 4 data bytes
        try assertRejects(data, "data.gguf", "data of tensor 'blk.0.q8' (Q8_0 [32, 2]): 68 bytes at offset 96 run past the end of the file (160 bytes)")
        var w = GGUFBytes()
        w.header(tensors: 1, kvs: 0)
        w.tensorInfo("far", dims: [4], type: 0, offset: 1 << 40)
        w.pad(to: 32)
        w.data.append(contentsOf: [UInt8](repeating: 0, count: 16))
        try assertRejects(w.data, "far.gguf", "tensor 'far' data offset 1099511627776 is past the end of the file")
    }

    func testBadTensorShapes() throws {
        var w = GGUFBytes()
        w.header(tensors: 1, kvs: 0)
        w.tensorInfo("5d", dims: [1, 1, 1, 1, 1], type: 0, offset: 0)
        try assertRejects(w.data, "5d.gguf", "tensor '5d' has 5 dimensions (at most 4)")
        let ragged = SyntheticTensor(name: "ragged", dims: [48, 2], type: 8, bytes: [UInt8](repeating: 0, count: 102))
        try assertRejects(gguf(kvCount: 0, kvs: { _ in }, tensors: [ragged]), "ragged.gguf",
                          "row length ne[0] = 48 is not a multiple of the Q8_0 block size 32")
        var huge = GGUFBytes()
        huge.header(tensors: 1, kvs: 0)
        huge.tensorInfo("huge", dims: [1 << 40, 1 << 40], type: 0, offset: 0)
        try assertRejects(huge.data, "huge.gguf", "tensor 'huge' has an absurd element count")
    }

    func testDuplicatesAndBadAlignment() throws {
        let dupKey = gguf(kvCount: 2, kvs: { w in w.kvU32("a", 1); w.kvU32("a", 2) }, tensors: [])
        try assertRejects(dupKey, "dupkey.gguf", "duplicate metadata key 'a'")
        let dupTensor = gguf(kvCount: 0, kvs: { _ in }, tensors: [f16Tensor, f16Tensor])
        try assertRejects(dupTensor, "duptensor.gguf", "duplicate tensor name 'norm'")
        let align = gguf(kvCount: 1, kvs: { w in w.kvU32("general.alignment", 24) }, tensors: [])
        try assertRejects(align, "align.gguf", "general.alignment")
    }

    /// Random byte and field corruption of a valid file: every outcome must be a clean parse or a ModelFileError.
    func testRandomCorruptionNeverCrashes() throws {
        let valid = gguf(kvCount: validKVCount, kvs: validKVs, tensors: [q8Tensor, f16Tensor])
        let path = tempDir.appendingPathComponent("fuzz.gguf").path
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> UInt64 {   // splitmix64: deterministic, so a failure reproduces
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        var opened = 0
        for _ in 0..<1500 {
            var data = valid
            for _ in 0..<Int(next() % 3 + 1) where data.count > 8 {
                let at = Int(next() % UInt64(data.count - 8))
                switch next() % 4 {
                case 0: data[at] = UInt8(truncatingIfNeeded: next())
                case 1: data.replaceSubrange(at..<at + 8, with: withUnsafeBytes(of: next() % 4096) { Array($0) })
                case 2: data.replaceSubrange(at..<at + 8, with: withUnsafeBytes(of: next()) { Array($0) })
                default: data = data.prefix(max(1, at))
                }
            }
            try data.write(to: URL(fileURLWithPath: path))
            do {
                let f = try GGUFFile(path: path)
                opened += 1
                for t in f.tensors { _ = try? f.dequantize(t) }
            } catch let e as ModelFileError {
                XCTAssertEqual(e.file, path)
            }
        }
        XCTAssertGreaterThan(opened, 0)
    }

    // MARK: real models against gguf-py checksums

    func testSmolLM2MatchesGGUFPy() throws {
        try checkModel(file: "SmolLM2-135M-Instruct.Q4_1.gguf", fixture: "smollm2", download: "smollm2",
                       architecture: "llama")
    }

    func testQwen2MatchesGGUFPy() throws {
        try checkModel(file: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", fixture: "qwen2", download: "qwen2.5-coder-0.5b",
                       architecture: "qwen2")
    }

    private struct Checksums: Decodable {
        struct Header: Decodable { let n_tensors: Int }
        struct Tensor: Decodable {
            let gguf_name: String, ggml_type: String, gguf_ne: [Int], numpy_shape: [Int], n_elements: Int
            let data_offset: Int, n_bytes: Int
            let sum: Double, sum_sq: Double, sum_abs: Double, min: Double, max: Double
            let first8: [Double], first32: [Double], last8: [Double]
            let probe_flat_indices: [Int], probe_values: [Double]
            let first256_sum: Double?, row1_first8: [Double]?
        }
        let header: Header
        let tensors: [Tensor]
    }

    private func checkModel(file: String, fixture: String, download: String, architecture: String) throws {
        let path = modelsDir + "/" + file
        guard FileManager.default.fileExists(atPath: path) else {
            throw XCTSkip("\(path) is missing: run `scripts/download-models.sh \(download)` (or set COQUANT_MODELS)")
        }
        let url = URL(fileURLWithPath: fixturesDir + "/\(fixture)/gguf_dequant_checksums.json")
        let expected = try JSONDecoder().decode(Checksums.self, from: Data(contentsOf: url))
        let opening = Date()
        let f = try GGUFFile(path: path)
        let openSeconds = Date().timeIntervalSince(opening)
        XCTAssertEqual(f.architecture, architecture)
        XCTAssertEqual(f.tensors.count, expected.header.n_tensors)
        XCTAssertEqual(f.tensors.map(\.name), expected.tensors.map(\.gguf_name))

        let largest = f.tensors.map(\.elementCount).max() ?? 0
        let buffer = UnsafeMutablePointer<Float>.allocate(capacity: largest)
        defer { buffer.deallocate() }
        var seconds = 0.0
        for t in expected.tensors {
            let name = t.gguf_name
            guard let info = f.tensor(named: name) else { XCTFail("\(name) missing"); continue }
            XCTAssertEqual(info.dims, t.gguf_ne, name)
            XCTAssertEqual(info.shape, t.numpy_shape, name)
            XCTAssertEqual(info.type.name, t.ggml_type, name)
            XCTAssertEqual(info.offset, t.data_offset, name)
            XCTAssertEqual(info.byteCount, t.n_bytes, name)
            XCTAssertEqual(info.elementCount, t.n_elements, name)

            let start = Date()
            try f.dequantize(info, into: buffer)
            seconds += Date().timeIntervalSince(start)
            let x = UnsafeBufferPointer(start: buffer, count: info.elementCount)

            // Fixture values are float32 printed as float64, so Float(v) is exact and bit patterns must match.
            func same(_ got: some Collection<Float>, _ want: [Double], _ what: String) {
                XCTAssertEqual(got.map(\.bitPattern), want.map { Float($0).bitPattern }, "\(name) \(what)")
            }
            same(x.prefix(8), t.first8, "first8")
            same(x.prefix(32), t.first32, "first32")
            same(x.suffix(8), t.last8, "last8")
            same(t.probe_flat_indices.map { x[$0] }, t.probe_values, "probe_values")
            if let row1 = t.row1_first8, info.dims.count == 2 { same(x[info.dims[0]..<info.dims[0] + 8], row1, "row1_first8") }

            let s = sums(x)
            func close(_ got: Double, _ want: Double, _ what: String) {
                // relative 1e-6, with a floor for sums that cancel to near zero
                XCTAssertLessThanOrEqual(abs(got - want), 1e-6 * max(abs(want), 1e-6 * s.abs), "\(name) \(what): \(got) vs \(want)")
            }
            close(s.sum, t.sum, "sum")
            close(s.sq, t.sum_sq, "sum_sq")
            close(s.abs, t.sum_abs, "sum_abs")
            XCTAssertEqual(s.min, Float(t.min), "\(name) min")
            XCTAssertEqual(s.max, Float(t.max), "\(name) max")
            if let want = t.first256_sum {
                let got = x.prefix(256).reduce(0.0) { $0 + Double($1) }
                XCTAssertLessThanOrEqual(abs(got - want), 1e-9 * max(1, abs(want)), "\(name) first256_sum")
            }
        }
        let elements = f.tensors.reduce(0) { $0 + $1.elementCount }
        print("\(file): opened in \(String(format: "%.3f", openSeconds)) s, dequantized \(f.tensors.count) tensors, \(elements) elements in \(String(format: "%.3f", seconds)) s")
    }

    /// float64 sums in 4096-element partials, so the accumulation error stays far below the 1e-6 tolerance.
    /// Plain pointer loops: tests build without optimisation, and this runs over every weight of the model.
    private func sums(_ x: UnsafeBufferPointer<Float>) -> (sum: Double, sq: Double, abs: Double, min: Float, max: Float) {
        var sum = 0.0, sq = 0.0, ab = 0.0
        var lo = Float.infinity, hi = -Float.infinity
        guard var p = x.baseAddress else { return (0, 0, 0, lo, hi) }
        let end = p + x.count
        while p < end {
            let chunkEnd = end - p > 4096 ? p + 4096 : end
            var s = 0.0, q = 0.0, a = 0.0
            while p < chunkEnd {
                let v = p.pointee
                let d = Double(v)
                s += d
                q += d * d
                a += d < 0 ? -d : d
                if v < lo { lo = v }
                if v > hi { hi = v }
                p += 1
            }
            sum += s; sq += q; ab += a
        }
        return (sum, sq, ab, lo, hi)
    }
}
