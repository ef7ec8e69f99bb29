{{/* The image reference. */}}
{{- define "vnet-cni.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{/* vnet-ipamd's configuration file (ipamd/config), as JSON. */}}
{{- define "vnet-cni.ipamdConfig" -}}
{{- $azure := dict "credential" .Values.cloud.azure.credential -}}
{{- with .Values.cloud.azure.resourceManagerEndpoint }}{{ $_ := set $azure "resourceManagerEndpoint" . }}{{ end -}}
{{- with .Values.cloud.azure.managedIdentityClientID }}{{ $_ := set $azure "managedIdentityClientID" . }}{{ end -}}
{{- if .Values.cloud.azure.caConfigMap }}{{ $_ := set $azure "caFile" "/etc/vnet-cni-ca/ca.pem" }}{{ end -}}
{{- $cfg := dict
  "warmIPTarget" .Values.pool.warmIPTarget
  "minIPTarget" .Values.pool.minIPTarget
  "ipAddressCount" .Values.pool.ipAddressCount
  "batchSize" .Values.pool.batchSize
  "cooldown" .Values.pool.cooldown
  "releaseDelay" .Values.pool.releaseDelay
  "mode" .Values.mode
  "cniConfDir" "/etc/cni/net.d"
  "socketPath" "/run/vnet-cni/ipamd.sock"
  "storeDir" "/run/vnet-cni/store"
  "pluginLockDir" "/run/vnet-cni"
  "releaseSpool" "/var/lib/vnet-cni/release-spool"
  "metricsAddr" "127.0.0.1:10093"
  "kubernetes" (dict "enabled" .Values.kubernetes.enabled)
  "cloud" (dict "provider" .Values.cloud.provider "azure" $azure)
-}}
{{- if eq .Values.mode "kubenet" }}{{ $_ := set $cfg "kubenet" (dict "clusterCIDR" (required "kubenet.clusterCIDR is required with mode kubenet" .Values.kubenet.clusterCIDR)) }}{{ end -}}
{{- with .Values.pool.maxIPs }}{{ $_ := set $cfg "maxIPs" . }}{{ end -}}
{{ toPrettyJson $cfg }}
{{- end -}}
