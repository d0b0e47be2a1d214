#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A read-only memory map of a whole file. Loaders read tensors straight out of the map, so a 2 GB checkpoint
/// never lands in a second buffer; the kernel pages it in on demand.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let count: Int
    public let base: UnsafeRawPointer

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw ModelFileError(path, "cannot open (\(String(cString: strerror(errno))))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw ModelFileError(path, "cannot stat") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw ModelFileError(path, "not a regular file") }
        count = Int(st.st_size)
        guard count > 0 else { throw ModelFileError(path, "file is empty") }
        let p = mmap(nil, count, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let p, p != MAP_FAILED else { throw ModelFileError(path, "mmap failed") }
        base = UnsafeRawPointer(p)
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: base), count) }

    /// Bytes `[offset, offset + length)`, or an error naming the file when the range runs past its end.
    public func bytes(_ offset: Int, _ length: Int, what: @autoclosure () -> String) throws -> UnsafeRawBufferPointer {
        guard offset >= 0, length >= 0, offset <= count, length <= count - offset else {
            // offset + length can overflow for a garbage length field: say both instead of their sum.
            throw ModelFileError(path, "\(what()): \(length) bytes at offset \(offset) run past the end of the file (\(count) bytes)")
        }
        return UnsafeRawBufferPointer(start: base + offset, count: length)
    }

    public func load<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        T(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}
