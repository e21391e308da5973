-- An autoscaler that cannot read metrics (no metrics-server, as on kind or bare kubeadm) still holds its
-- workload at the replicas it has; that is not an outage, so it is Healthy with a message saying why it
-- does not scale. Only an autoscaler that cannot reach its target (AbleToScale=False) is Degraded.
hs = {status = "Progressing", message = "waiting for the autoscaler's first reading"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "AbleToScale" and condition.status == "False" then
    hs.status = "Degraded"
    hs.message = (condition.reason or "") .. ": " .. (condition.message or "")
    return hs
  end
end
hs.status = "Healthy"
hs.message = "scaling on its metrics"
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "ScalingActive" and condition.status == "False" then
    hs.message = "not scaling, holding " .. tostring(obj.status.currentReplicas or "its") .. " replicas ("
      .. (condition.reason or "") .. "); resource metrics need metrics-server"
  end
end
return hs
