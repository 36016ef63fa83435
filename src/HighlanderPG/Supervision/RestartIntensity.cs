namespace HighlanderPG.Supervision;

/// <summary>OTP's restart intensity: at most <c>maxRestarts</c> within a sliding <c>window</c>.</summary>
internal sealed class RestartIntensity(TimeProvider time, int maxRestarts, TimeSpan window)
{
    private readonly Queue<long> _restarts = new();

    /// <summary>Records a restart; returns <see langword="false"/> when it exceeds the intensity.</summary>
    public bool TryRecord()
    {
        var now = time.GetTimestamp();
        while (_restarts.Count > 0 && time.GetElapsedTime(_restarts.Peek(), now) > window)
        {
            _restarts.Dequeue();
        }

        _restarts.Enqueue(now);
        return _restarts.Count <= maxRestarts;
    }
}
