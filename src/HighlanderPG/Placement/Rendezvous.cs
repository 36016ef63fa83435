using System.Text;

namespace HighlanderPG.Placement;

/// <summary>
/// Rendezvous (highest random weight) hashing of node ids over singleton keys: every node computes the same ranking of the
/// live nodes for each key, with no coordination, so that nodes below their share pick different singletons first, and a
/// node above its share hands over those another node ranks higher. A node joining or leaving moves only the keys it wins
/// or won.
/// </summary>
internal static class Rendezvous
{
    /// <summary>The weight of <paramref name="nodeId"/> for <paramref name="key"/>: the higher, the more that node is the key's favourite.</summary>
    public static ulong Score(string nodeId, long key) => Score(NodeHash(nodeId), key);

    /// <summary>The weight of a node (by <see cref="NodeHash"/>) for <paramref name="key"/>.</summary>
    public static ulong Score(ulong nodeHash, long key) => Mix(nodeHash ^ Mix(unchecked((ulong)key)));

    /// <summary>FNV-1a of the node id's UTF-8 bytes, mixed.</summary>
    public static ulong NodeHash(string nodeId)
    {
        var hash = 14695981039346656037UL;
        foreach (var b in Encoding.UTF8.GetBytes(nodeId))
        {
            hash = unchecked((hash ^ b) * 1099511628211UL);
        }

        return Mix(hash);
    }

    // splitmix64's finaliser: every input bit affects every output bit.
    private static ulong Mix(ulong z)
    {
        unchecked
        {
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            return z ^ (z >> 31);
        }
    }
}
