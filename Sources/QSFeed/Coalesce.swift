import QSModel

/// Merges a batch's operations so that later writes to a key win: the result applied in
/// one transaction leaves the same state as applying every operation in order, with each
/// key written at most once (a clear keeps its place and removes earlier writes it covers).
///
/// A batch without a clear and without two writes to one key (a backlog of distinct keys)
/// is returned as it is after one pass; keys hash as whole byte strings, not byte by byte.
public func coalesce(_ operations: [Mutation]) -> [Mutation] {
    var decided = Set<CoalesceKey>(minimumCapacity: operations.count)
    var merge = false
    for op in operations {
        switch op {
        case let .set(key, _, _), let .delete(key):
            if !decided.insert(CoalesceKey(key)).inserted { merge = true }
        case .clearPrefix:
            merge = true
        }
        if merge { break }
    }
    guard merge else { return operations }
    decided.removeAll(keepingCapacity: true)
    var clearedPrefixes = [[UInt8]]()
    var kept = [Mutation]()
    kept.reserveCapacity(operations.count)
    func coveredByLaterClear(_ key: [UInt8]) -> Bool {
        clearedPrefixes.contains { key.starts(with: $0) }
    }
    for op in operations.reversed() {
        switch op {
        case let .set(key, _, _), let .delete(key):
            if coveredByLaterClear(key) || !decided.insert(CoalesceKey(key)).inserted { continue }
            kept.append(op)
        case let .clearPrefix(prefix):
            if clearedPrefixes.contains(where: { prefix.starts(with: $0) }) { continue }
            clearedPrefixes.append(prefix)
            kept.append(op)
        }
    }
    return kept.reversed()
}

/// A key hashed as one byte string (`[UInt8]` itself feeds the hasher byte by byte).
struct CoalesceKey: Hashable {
    let bytes: [UInt8]

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    func hash(into hasher: inout Hasher) {
        bytes.withUnsafeBytes { hasher.combine(bytes: $0) }
    }
}
