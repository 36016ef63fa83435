using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace HighlanderPG.Benchmarks.Infrastructure;

/// <summary>
/// Listens to HighlanderPG's documented round-trip histogram (meter <c>HighlanderPG</c>, instrument
/// <c>highlander.session.round_trip.duration</c>) in this process, and keeps when each lock session round trip of each
/// in-process node was sent and answered. The measurements carry no node tag (bounded cardinality): each node is known
/// by <see cref="CurrentNode"/>, set where it is started, which flows into its session's tasks. That splits a hand-over into server and wire
/// time versus the nodes' own work, and counts the tries a follower needed, without touching the library.
/// </summary>
internal sealed class RoundTripRecorder : IDisposable
{
    public const string MeterName = "HighlanderPG";
    public const string InstrumentName = "highlander.session.round_trip.duration";

    /// <summary>The in-process node whose code runs here: set around a node's start, it flows into its session's tasks.</summary>
    public static readonly AsyncLocal<string?> CurrentNode = new();

    private readonly MeterListener _listener = new();
    private readonly List<(string? Node, long Start, long End)> _trips = [];

    public RoundTripRecorder()
    {
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter.Name == MeterName && instrument.Name == InstrumentName)
            {
                listener.EnableMeasurementEvents(instrument);
            }
        };
        _listener.SetMeasurementEventCallback<double>((_, seconds, tags, _) =>
        {
            // Recorded as soon as the answer is in: now is the end, the value says when it was sent.
            var end = Stopwatch.GetTimestamp();
            var node = CurrentNode.Value;
            lock (_trips)
            {
                _trips.Add((node, end - (long)(seconds * Stopwatch.Frequency), end));
            }
        });
        _listener.Start();
    }

    /// <summary>The round trips of <paramref name="node"/> answered after <paramref name="after"/> and no later than <paramref name="until"/>.</summary>
    public IReadOnlyList<(long Start, long End)> Between(string node, long after, long until)
    {
        lock (_trips)
        {
            return [.. _trips.Where(t => t.Node == node && t.End > after && t.End <= until).Select(t => (t.Start, t.End))];
        }
    }

    /// <summary>Forgets what is older than <paramref name="before"/>.</summary>
    public void Forget(long before)
    {
        lock (_trips)
        {
            _trips.RemoveAll(t => t.End < before);
        }
    }

    public void Dispose() => _listener.Dispose();
}
