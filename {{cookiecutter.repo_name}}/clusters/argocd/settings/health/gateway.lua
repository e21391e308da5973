-- A Gateway (Kubernetes Gateway API) is Healthy once Istio has accepted it, resolved its references (the TLS
-- secret among them) and programmed it. Istio reports it programmed only when the gateway's LoadBalancer Service
-- has an address, which on a cluster without a load-balancer provider (kind, bare metal) never comes: a Gateway
-- annotated "load-balancer-address: optional" by this repo is Healthy when that address is all that is missing
-- (reason AddressNotAssigned); the Service's node ports serve meanwhile. Istio gives the same reason while the
-- gateway has no ready pod, and without Lua's string library the two cannot be told apart: the gateway's own
-- Deployment (istiod's, not Argo CD's) is where to look. Until cert-manager has written the TLS secret a listener
-- reads ResolvedRefs False (InvalidCertificateRef): Progressing, not Degraded, so that a first sync does not fail
-- on it (python -m repo_tools checks that the secret is the one the Certificate writes). Without a status yet,
-- Progressing.
hs = {status = "Progressing", message = "waiting for Istio to report on the Gateway"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local annotations = (obj.metadata ~= nil and obj.metadata.annotations) or {}
local address_optional = annotations["{{ cookiecutter.domain }}/load-balancer-address"] == "optional"

local function verdict(conditions, where)
  for _, condition in ipairs(conditions or {}) do
    if condition.type == "ResolvedRefs" and condition.status == "False" and condition.reason == "InvalidCertificateRef" then
      return "Progressing", where .. "waiting for the TLS secret: " .. (condition.message or condition.reason)
    end
    if (condition.type == "Accepted" or condition.type == "ResolvedRefs") and condition.status == "False" then
      return "Degraded", where .. (condition.message or condition.reason or condition.type)
    end
  end
  for _, condition in ipairs(conditions or {}) do
    if condition.type == "Programmed" and condition.status ~= "True"
        and not (address_optional and condition.reason == "AddressNotAssigned") then
      return "Progressing", where .. (condition.message or "not programmed yet")
    end
  end
  return nil, nil
end

local status, message = verdict(obj.status.conditions, "")
if status ~= nil then
  hs.status, hs.message = status, message
  return hs
end
for _, listener in ipairs(obj.status.listeners or {}) do
  status, message = verdict(listener.conditions, "listener " .. tostring(listener.name) .. ": ")
  if status ~= nil then
    hs.status, hs.message = status, message
    return hs
  end
end
hs.status = "Healthy"
hs.message = "accepted, references resolved, programmed"
return hs
