namespace HighlanderPG.Messaging;

/// <summary>What went wrong with a message or a call (<see cref="MessagingException.Error"/>).</summary>
public enum MessagingError
{
    /// <summary>No node has registered the singleton for messages (wrong name or namespace, or no node with messaging has started).</summary>
    UnknownSingleton,

    /// <summary>The singleton's queue holds its maximum of unacknowledged messages.</summary>
    QueueFull,

    /// <summary>The payload's JSON exceeds the singleton's limit.</summary>
    PayloadTooLarge,

    /// <summary>The serializer refused the type, or could not read the JSON as the type asked for.</summary>
    NotSerializable,

    /// <summary>A bad argument (a null payload from SQL, a non-positive time-to-live or timeout).</summary>
    BadArgument,

    /// <summary>The message is not pending for this leader (already acknowledged, dead-lettered, or taken by another).</summary>
    NotPending,

    /// <summary>The call was delivered too often without an acknowledgement and was dead-lettered.</summary>
    DeadLettered,

    /// <summary>The call expired before a leader took it.</summary>
    Expired,

    /// <summary>The messaging tables are missing: no node with messaging has started against this schema.</summary>
    NotSetUp,
}

/// <summary>A message could not be sent, called, or acknowledged; <see cref="Error"/> says why, the message what to fix.</summary>
public sealed class MessagingException : Exception
{
    internal MessagingException(MessagingError error, string message, Exception? inner = null)
        : base(message, inner)
    {
        Error = error;
    }

    /// <summary>What went wrong.</summary>
    public MessagingError Error { get; }
}
