-- Argo CD's own rule keeps a LoadBalancer Service Progressing until a provider gives it an address, and
-- on a cluster without one (kind, bare metal) that is for ever. A Service annotated
-- "load-balancer-address: optional" by this repo is Healthy without one: its node ports serve meanwhile.
-- Every other Service keeps Argo CD's rule.
hs = {status = "Healthy", message = ""}
if obj.spec == nil or obj.spec.type ~= "LoadBalancer" then
  return hs
end
if obj.status ~= nil and obj.status.loadBalancer ~= nil and obj.status.loadBalancer.ingress ~= nil
    and #obj.status.loadBalancer.ingress > 0 then
  hs.message = "load-balancer address assigned"
  return hs
end
local annotations = (obj.metadata ~= nil and obj.metadata.annotations) or {}
if annotations["{{ cookiecutter.domain }}/load-balancer-address"] == "optional" then
  hs.message = "no load-balancer address (none comes without a provider); reachable on its node ports"
  return hs
end
hs.status = "Progressing"
hs.message = "waiting for a load-balancer address"
return hs
