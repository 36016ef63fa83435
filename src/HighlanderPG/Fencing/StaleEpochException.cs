using Npgsql;

namespace HighlanderPG.Fencing;

/// <summary>
/// A write was fenced off: the epoch it carried is no longer the singleton's current one, because another node has
/// taken over. Abandon the transaction (it is already failed on the server) and stop the work.
/// </summary>
public sealed class StaleEpochException : Exception
{
    internal StaleEpochException(string name, long epoch, PostgresException inner)
        : base($"Fenced: epoch {epoch} of singleton '{name}' is stale ({inner.MessageText}).", inner)
    {
        Name = name;
        Epoch = epoch;
    }

    /// <summary>The singleton.</summary>
    public string Name { get; }

    /// <summary>The stale epoch.</summary>
    public long Epoch { get; }
}
