using Npgsql;

namespace HighlanderPG.Messaging;

/// <summary>
/// Messaging on a node (<c>AddHighlanderMessaging</c>): the limits it registers for each of its singletons, and how its
/// inboxes wait. Every node should use the same limits: the last node to start writes them.
/// </summary>
public sealed class HighlanderMessagingOptions
{
    /// <summary>At most this many unacknowledged messages per singleton; a send beyond it fails with <see cref="MessagingError.QueueFull"/>. Default 10,000.</summary>
    public int MaxPending { get; set; } = 10_000;

    /// <summary>A message delivered this many times without an acknowledgement (the child threw or nacked, or the leader was lost before its ack) is dead-lettered. Default 5.</summary>
    public int MaxDeliveries { get; set; } = 5;

    /// <summary>The largest payload, in bytes of its JSON text; a larger send fails with <see cref="MessagingError.PayloadTooLarge"/>. Default 1 MiB.</summary>
    public int MaxPayloadBytes { get; set; } = 1024 * 1024;

    /// <summary>The time-to-live of a message sent without one; <see langword="null"/> (the default): messages wait until a leader takes them.</summary>
    public TimeSpan? DefaultTimeToLive { get; set; }

    /// <summary>How often an idle inbox looks for messages even without a notification (a backstop). Default 5 s.</summary>
    public TimeSpan PollInterval { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>How long acknowledged and expired messages are kept (with their replies) before the leader deletes them. Default 1 hour. Dead letters are kept until replayed or deleted.</summary>
    public TimeSpan Retention { get; set; } = TimeSpan.FromHours(1);

    /// <summary>Payloads and replies; default <see cref="SystemTextJsonMessageSerializer"/>.</summary>
    public IMessageSerializer Serializer { get; set; } = SystemTextJsonMessageSerializer.Default;

    /// <summary>
    /// The data source for taking and acknowledging messages (and <see cref="ISingletonInbox.ProcessAsync"/>'s
    /// transactions) and for the node's <see cref="SingletonClient"/>. Default: a pooled data source built from
    /// <see cref="HighlanderOptions.ConnectionString"/> (application name <c>highlander-msg/{NodeId}</c>).
    /// </summary>
    public NpgsqlDataSource? DataSource { get; set; }

    internal string? Validate()
    {
        var problems = new List<string>();
        if (MaxPending <= 0)
        {
            problems.Add($"{nameof(MaxPending)} must be positive (got {MaxPending}).");
        }

        if (MaxDeliveries <= 0)
        {
            problems.Add($"{nameof(MaxDeliveries)} must be positive (got {MaxDeliveries}).");
        }

        if (MaxPayloadBytes is <= 0 or > 256 * 1024 * 1024)
        {
            problems.Add($"{nameof(MaxPayloadBytes)} must be between 1 and 268435456 (got {MaxPayloadBytes}).");
        }

        if (DefaultTimeToLive is { } ttl && ttl <= TimeSpan.Zero)
        {
            problems.Add($"{nameof(DefaultTimeToLive)} must be positive or null (got {ttl}).");
        }

        if (PollInterval <= TimeSpan.Zero || PollInterval > TimeSpan.FromDays(1))
        {
            problems.Add($"{nameof(PollInterval)} must be positive and at most 1 day (got {PollInterval}).");
        }

        if (Retention < TimeSpan.Zero)
        {
            problems.Add($"{nameof(Retention)} must not be negative (got {Retention}).");
        }

        if (Serializer is null)
        {
            problems.Add($"{nameof(Serializer)} must not be null.");
        }

        return problems.Count == 0 ? null : $"Invalid {nameof(HighlanderMessagingOptions)}: " + string.Join(" ", problems);
    }
}

/// <summary>Where a <see cref="SingletonClient"/> sends: the database, the namespace and schema of the singletons.</summary>
public sealed class SingletonClientOptions
{
    /// <summary>The connection string, when the client is not given a data source (it then builds and owns a pooled one).</summary>
    public string? ConnectionString { get; set; }

    /// <summary>The singletons' namespace (<see cref="HighlanderOptions.Namespace"/> of the nodes). Default <c>highlander</c>.</summary>
    public string Namespace { get; set; } = "highlander";

    /// <summary>The schema of the messaging tables (<see cref="HighlanderOptions.FencingSchema"/> of the nodes). Default <c>highlander</c>.</summary>
    public string Schema { get; set; } = "highlander";

    /// <summary>Payloads and replies; default <see cref="SystemTextJsonMessageSerializer"/>.</summary>
    public IMessageSerializer Serializer { get; set; } = SystemTextJsonMessageSerializer.Default;
}
